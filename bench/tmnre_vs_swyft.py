"""galton TMNRE next to swyft 0.4.5's TMNRE: the same simulator, rounds, simulations per round,
head width, batch size, epoch cap and early stopping, on sbibm observations.

    python bench/tmnre_vs_swyft.py [--tasks two_moons slcp gaussian_linear] [--observations 1 2 3]
                                   [--rounds 5] [--per-round 2000] [--hidden 64] [--epochs 100]

swyft runs in its own environment (`.venv-peers`, from bench/requirements-peers.txt) through
bench/peers/swyft_tmnre.py, as shipped: its per-marginal heads, AdamW at 1e-3, early stopping with
patience 5 on a 20 % validation split, a fresh network per round on that round's simulations,
rectangular bounds at 1e-6 from the 1-D heads, 100k prior draws in the last box resampled by
their weights for the posterior samples. galton gets the same settings (its heads are MLPs of
the same width, two hidden layers; swyft's have a linear layer, two residual blocks with batch
norm and dropout, and a linear layer). Both are timed in a fresh process from the first
simulation to the end of drawing 10,000 samples of every marginal, imports excluded; galton
cold (empty compile cache) and warm (again with the cache it filled). Prints marginal C2ST
(3,000 draws against 3,000 reference samples) against the reference posterior for both, the times and swyft / galton as the speed-up.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import report

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
N_SAMPLES = 10_000
SCORED = 3000


def galton_worker(inp: str, out: str, task_name: str, rounds: int, per_round: int, hidden: int, epochs: int, batch: int, seed: int) -> None:
    import jax

    import galton
    from galton.methods import TMNRE
    from galton.tasks import get
    from galton.train import Training

    data = np.load(inp)
    task = get(task_name)
    marginals = [tuple(task.names[c] for c in row if c >= 0) for row in data["marginals"]]
    training = Training(learning_rate=1e-3, batch_size=batch, patience=5, validation_fraction=0.2, max_epochs=epochs)
    # min_shrink=0: every round runs, as in swyft's loop (galton's default would spend the rest of
    # the budget in one round once the box stops shrinking)
    method = TMNRE(marginals=marginals, hidden=hidden, depth=2, training=training, min_shrink=0.0)
    start = time.perf_counter()
    post = galton.infer(task.problem, data["x_obs"], key=jax.random.key(seed), method=method, budget=rounds * per_round, rounds=rounds, progress=False)
    draws = post.marginal_samples(N_SAMPLES, key=jax.random.key(seed + 1))
    seconds = time.perf_counter() - start
    d = len(task.names)
    np.savez(
        out, seconds=seconds, epochs=np.array([h["epochs"] for h in post.history]),
        samples_1d=np.stack([draws[(n,)][:, 0] for n in task.names], -1),
        samples_2d=np.stack([draws[m] for m in marginals if len(m) == 2]) if any(len(m) == 2 for m in marginals) else np.zeros((0, N_SAMPLES, 2)),
        bounds_final=np.asarray(post.rounds[-1]["box"]).reshape(d, 2),
    )


def prior_arrays(task) -> dict[str, np.ndarray]:
    if task.name == "gaussian_linear":
        from galton.tasks.gaussian_linear import DIM, VARIANCE

        return {"loc": np.zeros(DIM), "scale": np.full(DIM, np.sqrt(VARIANCE))}
    d = len(task.names)
    bound = {"two_moons": 1.0, "slcp": 3.0, "slcp_distractors": 3.0}[task.name]
    return {"low": np.full(d, -bound), "high": np.full(d, bound)}


def scores(out: Path, reference: np.ndarray, pairs: list[tuple[int, int]]) -> tuple[float, float, float, np.ndarray]:
    from galton.diagnostics import c2st

    r = np.load(out)
    # 3,000 of each side: sklearn's classifier on 10k + 10k per marginal took minutes per marginal
    ref, n = reference[np.random.default_rng(0).permutation(len(reference))[:SCORED]], SCORED
    one = [c2st(ref[:, [i]], r["samples_1d"][:n, [i]]) for i in range(reference.shape[1])]
    two = [c2st(ref[:, list(p)], r["samples_2d"][k][:n]) for k, p in enumerate(pairs)]
    return float(r["seconds"]), float(np.mean(one)), float(np.mean(two)) if two else float("nan"), r["epochs"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["two_moons", "slcp", "gaussian_linear"])
    parser.add_argument("--observations", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=2000)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--worker", nargs=9, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        inp, out, task, *rest = args.worker
        return galton_worker(inp, out, task, *map(int, rest))
    if not PEERS_PYTHON.exists():
        sys.exit(f"no peers environment at {PEERS_PYTHON}: python3 -m venv .venv-peers && .venv-peers/bin/pip install -r bench/requirements-peers.txt")

    import itertools

    from sbibm import reference_samples

    from galton.tasks import get

    settings = [str(args.rounds), str(args.per_round), str(args.hidden), str(args.epochs), str(args.batch_size)]
    with tempfile.TemporaryDirectory() as workdir:
        inp, out = Path(workdir) / "in.npz", Path(workdir) / "out.npz"
        for task_name in args.tasks:
            task = get(task_name)
            d = len(task.names)
            pairs = list(itertools.combinations(range(d if d <= 6 else 5), 2))
            marginals = np.array([[i, -1] for i in range(d)] + [list(p) for p in pairs])
            rows = {}
            for k in args.observations:
                reference = reference_samples(task, k)
                np.savez(inp, x_obs=np.asarray(task.observation(k)), marginals=marginals, **prior_arrays(task))
                peer = [str(PEERS_PYTHON), str(ROOT / "bench/peers/swyft_tmnre.py"), str(inp), str(out), "--task", task_name,
                        "--rounds", settings[0], "--per-round", settings[1], "--hidden", settings[2], "--epochs", settings[3],
                        "--batch-size", settings[4], "--seed", str(k)]
                subprocess.run(peer, check=True)
                rows.setdefault("swyft", []).append(scores(out, reference, pairs))
                env = {**os.environ, "GALTON_CACHE_DIR": str(Path(workdir) / f"cache-{task_name}-{k}")}
                worker = [sys.executable, __file__, "--worker", str(inp), str(out), task_name, *settings, str(k)]
                for label in ("galton cold", "galton warm"):
                    subprocess.run(worker, check=True, env=env)
                    rows.setdefault(label, []).append(scores(out, reference, pairs))
                for label, values in rows.items():
                    s, one, two, epochs = values[-1]
                    print(f"{task_name} obs {k} {label:12s} {s:7.1f} s  1-D C2ST {one:.3f}  2-D C2ST {two:.3f}  epochs {list(epochs)}", flush=True)
            means = {label: np.mean([v[:3] for v in values], axis=0) for label, values in rows.items()}
            for label, (s, one, two) in means.items():
                print(f"{task_name} mean {label:12s} {s:7.1f} s  1-D C2ST {one:.3f}  2-D C2ST {two:.3f}")
                report("tmnre_vs_swyft", f"{label}, {task_name}", total_s=s, c2st_1d=one, c2st_2d=two)
            for label in ("galton cold", "galton warm"):
                ratio = means["swyft"][0] / means[label][0]
                print(f"{task_name}: speed-up of {label} over swyft, end to end: {ratio:.1f}x")
                report("tmnre_vs_swyft", f"{label} / swyft, {task_name}", galton_s=means[label][0], peer_s=means["swyft"][0], ratio=ratio)


if __name__ == "__main__":
    main()
