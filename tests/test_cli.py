import jax
import numpy as np

from galton.cli import main
from galton.simulate import simulate
from galton.store import load_simulations
from galton.tasks import get


def test_tasks_lists_every_task(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ["funnel", "two_moons", "gaussian_linear", "slcp"]:
        assert name in out


def test_simulate_fills_a_store_that_resumes(tmp_path, capsys):
    path = tmp_path / "funnel.zarr"
    assert main(["simulate", "funnel", "-n", "300", "--store", str(path), "--seed", "4", "--chunk-size", "100"]) == 0
    assert "300 simulations of funnel" in capsys.readouterr().out
    stored = load_simulations(path)
    expected = simulate(get("funnel").problem, 300, key=jax.random.key(4), chunk_size=100, progress=False)
    np.testing.assert_array_equal(stored.x, expected.x)
    assert main(["simulate", "funnel", "-n", "300", "--store", str(path), "--seed", "5"]) == 2
    assert "different run" in capsys.readouterr().err


def test_run_writes_samples_plot_and_summary(tmp_path, capsys):
    import json

    import arviz as az

    out = tmp_path / "run"
    # two_moons: a 2-D corner plot and a 2-D classifier keep the run to seconds (gaussian_linear's 10-D took a minute)
    assert main(["run", "two_moons", "--budget", "600", "--samples", "500", "--max-epochs", "20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "C2ST against the reference posterior" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert 0.5 <= summary["c2st"] <= 1.0 and summary["budget"] == 600 and summary["epochs"][0] <= 20
    assert (out / "corner.png").stat().st_size > 10_000
    samples = az.from_netcdf(out / "samples.nc")
    assert samples.posterior["theta_1"].shape == (1, 500)


def test_run_tmnre_writes_marginals_corner_and_truncation(tmp_path, capsys):
    import json

    out = tmp_path / "tmnre"
    args = ["run", "two_moons", "--method", "tmnre", "--rounds", "2", "--budget", "600", "--samples", "300", "--max-epochs", "10",
            "--set", "truncation=correlated", "--set", "epsilon=1e-4", "--out", str(out)]
    assert main(args) == 0
    assert "mean C2ST of the 2 1-D marginals" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["truncation"]) == 2 and set(summary["marginal_c2st"]) == {"theta_1", "theta_2", "theta_1,theta_2"}
    with np.load(out / "marginals.npz") as marginals:
        assert marginals["theta_1,theta_2"].shape == (300, 2)
    for png in ("corner.png", "truncation.png"):
        assert (out / png).stat().st_size > 10_000
    assert "region_share_of_box" in summary["truncation"][1]  # the second round's proposal: the box cut by the pair's head
    assert main(args[:-4] + ["--set", "trunc=box", "--out", str(out)]) == 2
    assert "tmnre has no setting trunc; its settings are" in capsys.readouterr().err


def test_run_smc_abc_reports_its_schedule(tmp_path, capsys):
    import json

    out = tmp_path / "smc"
    assert main(["run", "two_moons", "--method", "smc_abc", "--budget", "2000", "--samples", "300", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ABC: " in printed and "generations" in printed and "C2ST against the reference posterior" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["abc"]["simulations"] <= 2000 and len(summary["abc"]["generations"]) >= 3 and summary["epochs"] == []
    assert (out / "corner.png").stat().st_size > 10_000 and not (out / "loss.png").exists()


def test_run_a_gold_mining_method_on_a_program_task(tmp_path, capsys):
    import json

    out = tmp_path / "gold"
    assert main(["run", "galton_board", "--method", "alices", "--budget", "600", "--samples", "300", "--out", str(out)]) == 0
    assert "C2ST against the reference posterior" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["c2st"] < 0.75 and len(summary["epochs"]) == 1


def test_demo_is_a_run_of_two_moons_with_every_run_option(tmp_path, monkeypatch):
    from galton.cli import build_parser, run

    seen = []
    monkeypatch.setattr(run, "run_inference", lambda args: seen.append(args) or 0)
    assert main(["demo", "--out", str(tmp_path)]) == 0
    expected = build_parser().parse_args(["run", "two_moons", "--budget", "5000", "--out", str(tmp_path)])
    assert vars(seen[0]) == vars(expected) and seen[0].settings == []


def test_bad_out_and_set_values_fail_before_anything_is_simulated(tmp_path, capsys, monkeypatch):
    import sys

    def no_inference(*args, **kwargs):
        raise AssertionError("the run should have stopped before inferring")

    monkeypatch.setattr(sys.modules["galton.infer"], "infer", no_inference)
    (tmp_path / "afile").write_text("not a directory")
    under_a_file = str(tmp_path / "afile" / "sub")
    cases = [
        (["run", "two_moons", "--out", under_a_file], f"--out {under_a_file} cannot be made a directory: Not a directory"),
        (["demo", "--out", under_a_file], f"--out {under_a_file} cannot be made a directory"),
        (["run", "two_moons", "--method", "rejection_abc", "--set", "quantile=abc"], "rejection_abc's quantile takes a number"),
        (["run", "two_moons", "--method", "mcmc_abc", "--set", "adapt_every=0"], "adapt_every must be a positive integer"),
        (["run", "two_moons", "--set", "training=3"], "npe's training is a Training settings object, which --set cannot build"),
        (["muse", "funnel", "--dim", "-1"], "dim must be a positive integer, got -1"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
