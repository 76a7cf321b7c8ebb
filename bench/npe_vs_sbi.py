"""galton NPE next to sbi's NPE on the same 10k two_moons simulations, same defaults.

    python bench/npe_vs_sbi.py [--observations 1 2 3] [--budget 10000]

sbi runs in its own environment (`.venv-peers`, from bench/requirements-peers.txt) on the
very simulations galton trains on. Prints, per observation and tool: training time, time
for 10k posterior samples, epochs, C2ST against the exact reference posterior, and the
end-to-end speed ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from galton.diagnostics import c2st
from galton.infer import infer
from galton.simulate import simulate
from galton.tasks import get

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"


def run_galton(task, sims, x_obs, flow, seed):
    start = time.perf_counter()
    posterior = infer(task.problem, x_obs, key=jax.random.key(seed), method="npe", simulations=sims, flow=flow, progress=False)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    samples = np.asarray(posterior.sample(10_000, key=jax.random.key(seed + 1)))
    return samples, train_seconds, time.perf_counter() - start, posterior.history[-1]["epochs"]


def run_sbi(sims, x_obs, flow, seed, workdir):
    inp, out = Path(workdir) / "in.npz", Path(workdir) / "out.npz"
    np.savez(inp, theta=sims.theta, x=sims.x, x_obs=np.asarray(x_obs), low=-np.ones(2, np.float32), high=np.ones(2, np.float32))
    subprocess.run([str(PEERS_PYTHON), str(ROOT / "bench/peers/sbi_npe.py"), str(inp), str(out), "--flow", flow, "--seed", str(seed)], check=True)
    r = np.load(out)
    return r["samples"], float(r["train_seconds"]), float(r["sample_seconds"]), int(r["epochs"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--observations", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--galton-flows", nargs="+", default=["nsf", "maf"])
    args = parser.parse_args()
    if not PEERS_PYTHON.exists():
        sys.exit(f"no peers environment at {PEERS_PYTHON}: python3 -m venv .venv-peers && .venv-peers/bin/pip install -r bench/requirements-peers.txt")
    task = get("two_moons")
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for k in args.observations:
            x_obs = task.observation(k)
            reference = np.asarray(task.reference_posterior(x_obs, 10_000, key=jax.random.key(100 + k)))
            sims = simulate(task.problem, args.budget, key=jax.random.key(k), progress=False)
            runs = {f"sbi maf": run_sbi(sims, x_obs, "maf", k, workdir)}
            for flow in args.galton_flows:
                runs[f"galton {flow}"] = run_galton(task, sims, x_obs, flow, k)
            for name, (samples, train_s, sample_s, epochs) in runs.items():
                rows.append((k, name, train_s, sample_s, epochs, c2st(reference, samples)))
                print(f"obs {k} {name:11s} train {train_s:6.1f} s  sample {sample_s:5.2f} s  epochs {epochs:4d}  C2ST {rows[-1][-1]:.3f}", flush=True)

    print(f"\n{'tool':12s} {'train s':>8s} {'sample s':>9s} {'total s':>8s} {'epochs':>7s} {'C2ST':>6s}   (mean over observations {args.observations})")
    summary = {}
    for name in dict.fromkeys(r[1] for r in rows):
        sel = [r for r in rows if r[1] == name]
        train_s, sample_s = np.mean([r[2] for r in sel]), np.mean([r[3] for r in sel])
        summary[name] = train_s + sample_s
        print(f"{name:12s} {train_s:8.1f} {sample_s:9.2f} {train_s + sample_s:8.1f} {np.mean([r[4] for r in sel]):7.0f} {np.mean([r[5] for r in sel]):6.3f}")
    for name, total in summary.items():
        if name.startswith("galton"):
            print(f"speed-up of {name} over sbi maf, end to end: {summary['sbi maf'] / total:.1f}x")


if __name__ == "__main__":
    main()
