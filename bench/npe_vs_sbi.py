"""galton NPE next to sbi's NPE on the same two_moons simulations, with the same defaults.

    python bench/npe_vs_sbi.py [--observations 1 2 3] [--budget 10000]

sbi runs in its own environment (`.venv-peers`, from bench/requirements-peers.txt) on the
very simulations galton trains on. Each fit runs in a fresh process and is timed from the
start of training to the end of drawing 10k posterior samples (imports excluded for both).
galton is timed twice: cold (an empty compile cache, as on first use) and warm (the same
configuration again: galton keeps compiled programs in a persistent cache). Prints, per
observation and tool, training and sampling time, epochs and C2ST against the exact
reference posterior, then the means and the end-to-end speed-ups over sbi.
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


def galton_worker(inp: str, out: str, flow: str, seed: int) -> None:
    """Fit galton NPE on the simulations in ``inp`` and write samples and timings to ``out``."""
    import jax

    from galton.infer import infer
    from galton.store import Simulations
    from galton.tasks import get

    data = np.load(inp)
    task = get("two_moons")
    sims = Simulations(data["theta"], data["x"])
    start = time.perf_counter()
    posterior = infer(task.problem, data["x_obs"], key=jax.random.key(seed), method="npe", simulations=sims, flow=flow, progress=False)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    samples = np.asarray(posterior.sample(10_000, key=jax.random.key(seed + 1)))
    np.savez(out, samples=samples, train_seconds=train_seconds, sample_seconds=time.perf_counter() - start,
             epochs=posterior.history[-1]["epochs"])


def run(command: list[str], out: Path, env=None):
    subprocess.run(command, check=True, env=env, cwd=out.parent)  # sbi writes its logs into the working directory
    r = np.load(out)
    return r["samples"], float(r["train_seconds"]), float(r["sample_seconds"]), int(r["epochs"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--observations", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--galton-flows", nargs="+", default=["nsf", "maf"])
    parser.add_argument("--worker", nargs=4, metavar=("IN", "OUT", "FLOW", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        inp, out, flow, seed = args.worker
        return galton_worker(inp, out, flow, int(seed))
    if not PEERS_PYTHON.exists():
        sys.exit(f"no peers environment at {PEERS_PYTHON}: python3 -m venv .venv-peers && .venv-peers/bin/pip install -r bench/requirements-peers.txt")

    import jax

    from galton.diagnostics import c2st
    from galton.simulate import simulate
    from galton.tasks import get

    task = get("two_moons")
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        inp, out = Path(workdir) / "in.npz", Path(workdir) / "out.npz"
        for k in args.observations:
            x_obs = task.observation(k)
            reference = np.asarray(task.reference_posterior(x_obs, 10_000, key=jax.random.key(100 + k)))
            sims = simulate(task.problem, args.budget, key=jax.random.key(k), progress=False)
            np.savez(inp, theta=sims.theta, x=sims.x, x_obs=np.asarray(x_obs), low=-np.ones(2, np.float32), high=np.ones(2, np.float32))
            runs = {"sbi maf": run([str(PEERS_PYTHON), str(ROOT / "bench/peers/sbi_npe.py"), str(inp), str(out), "--flow", "maf", "--seed", str(k)], out)}
            for flow in args.galton_flows:
                env = {**os.environ, "GALTON_CACHE_DIR": str(Path(workdir) / f"cache-{k}-{flow}")}
                worker = [sys.executable, __file__, "--worker", str(inp), str(out), flow, str(k)]
                runs[f"galton {flow} cold"] = run(worker, out, env)
                runs[f"galton {flow} warm"] = run(worker, out, env)
            for name, (samples, train_s, sample_s, epochs) in runs.items():
                rows.append((k, name, train_s, sample_s, epochs, c2st(reference, samples)))
                print(f"obs {k} {name:16s} train {train_s:6.1f} s  sample {sample_s:5.2f} s  epochs {epochs:4d}  C2ST {rows[-1][-1]:.3f}", flush=True)

    print(f"\n{'tool':17s} {'train s':>8s} {'sample s':>9s} {'total s':>8s} {'epochs':>7s} {'C2ST':>6s}   (mean over observations {args.observations})")
    totals = {}
    for name in dict.fromkeys(r[1] for r in rows):
        sel = [r for r in rows if r[1] == name]
        train_s, sample_s = np.mean([r[2] for r in sel]), np.mean([r[3] for r in sel])
        totals[name] = train_s + sample_s
        epochs, score = np.mean([r[4] for r in sel]), np.mean([r[5] for r in sel])
        print(f"{name:17s} {train_s:8.1f} {sample_s:9.2f} {train_s + sample_s:8.1f} {epochs:7.0f} {score:6.3f}")
        report("npe_vs_sbi", f"{name}, two_moons {args.budget}", train_s=train_s, sample_s=sample_s, total_s=totals[name], epochs=epochs, c2st=score)
    for name, total in totals.items():
        if name.startswith("galton"):
            print(f"speed-up of {name} over sbi maf, end to end (train + 10k samples): {totals['sbi maf'] / total:.1f}x")
            report("npe_vs_sbi", f"{name} / sbi maf, two_moons {args.budget}", galton_s=total, peer_s=totals["sbi maf"], ratio=totals["sbi maf"] / total)


if __name__ == "__main__":
    main()
