"""galton's RASCAL and ALICES next to madminer 0.9.6's (ParameterizedRatioEstimator, PyTorch): the
same augmented data, network widths, epochs, batch size, learning rate and loss weights, on the
galton_board task (issue 16).

    python bench/gold_vs_madminer.py [--budgets 3000 10000] [--methods rascal alices] [--seeds 0 1 2]
                                     [--epochs 50] [--batch-size 128] [--lr 1e-3] [--alpha 0.1]
                                     [--n-workers 0] [--torch-threads 1]

Data: per budget, galton.methods.gold.pair_simulations(galton_board, budget, θ_ref = 0) (half the
rows x ~ p(x|θ0), θ0 from the prior, half x ~ p(x|0)), exported as madminer's .npy training files
(x, theta = θ0, y = 0 for x ~ θ0 and 1 for x ~ θ1, r_xz = exp(joint log ratio), t_xz = joint
score at θ0). Both tools train on these rows: a tanh MLP with two hidden layers of 64, Adam at a
constant --lr, global gradient norm clipped at 5, --batch-size, 10 % of the rows held out, exactly
--epochs epochs (galton: patience = max_epochs = --epochs, so it keeps its best validation
epoch; madminer: early_stopping=False, its last epoch), alpha = --alpha on the score term in
units of Var(t) of the labels (galton's convention; madminer gets the equivalent raw weight,
see bench/peers/madminer_ratio.py). What still differs is each tool's own design: madminer's
network outputs log r̂(x|θ0, θ_ref) directly and its score term covers the x ~ θ0 rows only;
galton's gives log r̂ = f(θ0, x) − f(θ_ref, x) and also fits ∇f(θ_ref, x) to the score of the
x ~ θ_ref rows. madminer's RASCAL clips log r at ±10, galton's at ±30.

madminer runs in .venv-peers through bench/peers/madminer_ratio.py with its DataLoader's
--n-workers processes (0 by default: madminer's default of 8, forked anew each epoch, trained 11x
slower on 2 cores) and --torch-threads intra-op threads (1 by default: 2 trained 15x slower on 2
busy cores; galton's time did not change with XLA held to one thread). galton runs in a fresh
process, cold (an empty compile cache), warm (again, with the cache it filled) and hot (the
same fit once more in the warm process, its programs already in memory: training alone). Times: the training call alone (madminer's train, galton's fit), imports and
evaluation excluded. Error: bench/gold.py's Board, the exact log-ratio MSE over θ0 on 19 grid
points in [−0.9, 0.9] and all 21 slots weighted by ½(p(x|θ0) + p(x|0)); means over seeds.
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


def galton_worker(folder: str, out: str, method: str, epochs: int, batch: int, lr: float, alpha: float, seed: int, fits: int) -> None:
    """Fit galton's ``method`` on the pairs in ``folder`` ``fits`` times; write log r̂ at the evaluation points and the times."""
    import jax

    import galton
    from galton.methods import gold
    from galton.store import Simulations
    from galton.train import Training

    d = Path(folder)
    pairs = np.load(d / "pairs.npz")
    task = galton.tasks.get("galton_board")
    sims = Simulations(pairs["theta0"], pairs["x"], {k: pairs[k] for k in gold.pairs.COLUMNS}, task.problem.names)
    training = Training(learning_rate=lr, batch_size=batch, validation_fraction=0.1, patience=epochs, max_epochs=epochs)
    estimator = galton.methods.get(method, theta_ref=(0.0,), alpha=alpha, training=training)
    seconds = []
    for _ in range(fits):
        start = time.perf_counter()
        net, history = estimator.fit(sims, task.problem.prior, key=jax.random.key(seed), progress=False)
        seconds.append(time.perf_counter() - start)
    x, theta0 = np.load(d / "x_eval.npy"), np.load(d / "theta_eval.npy")
    log_r = gold.log_ratio(net, jax.numpy.asarray(x), jax.numpy.asarray(theta0), jax.numpy.zeros_like(theta0))
    np.savez(out, log_r=np.asarray(log_r, np.float64), seconds=np.array(seconds), epochs=history["epochs"])


def export(pairs, board, folder: Path) -> float:
    """The pairs as madminer's training files and galton's npz, the evaluation points; returns Var(t)."""
    e = pairs.extras
    n = len(pairs)
    np.savez(folder / "pairs.npz", theta0=pairs.theta, x=pairs.x, **e)
    np.save(folder / "x.npy", pairs.x.reshape(n, -1).astype(np.float32))
    np.save(folder / "theta.npy", pairs.theta.astype(np.float32))
    np.save(folder / "y.npy", e["y"].reshape(n, 1).astype(np.float32))
    np.save(folder / "r_xz.npy", np.exp(e["log_ratio"].astype(np.float64)).reshape(n, 1).astype(np.float32))
    np.save(folder / "t_xz.npy", e["score0"].astype(np.float32))
    np.save(folder / "x_eval.npy", board.x.reshape(-1, 1))
    np.save(folder / "theta_eval.npy", np.ascontiguousarray(board.theta0).reshape(-1, 1))
    labels = np.where(e["y"][:, None] == 0, e["score0"], e["score1"])  # as galton's fit weighs them
    return float(np.var(np.asarray(labels, np.float64)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[3000, 10_000])
    parser.add_argument("--methods", nargs="+", choices=["rascal", "alices"], default=["rascal", "alices"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--n-workers", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--worker", nargs=9, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        folder, out, method, epochs, batch, lr, alpha, seed, fits = args.worker
        return galton_worker(folder, out, method, int(epochs), int(batch), float(lr), float(alpha), int(seed), int(fits))
    if not PEERS_PYTHON.exists():
        sys.exit(f"no peers environment at {PEERS_PYTHON}: python3 -m venv .venv-peers && .venv-peers/bin/pip install -r bench/requirements-peers.txt")

    import jax
    from gold import Board

    from galton.methods import gold

    board = Board()
    settings = [str(args.epochs), str(args.batch_size), str(args.lr), str(args.alpha)]
    table = []
    with tempfile.TemporaryDirectory() as workdir:
        folder, out = Path(workdir), Path(workdir) / "out.npz"

        def run(command, env=None):
            """[(seconds, MSE, epochs)] for each fit the command made."""
            subprocess.run(command, check=True, env=env)
            r = np.load(out)
            est = r["log_r"].reshape(board.exact.shape)
            return [(float(s), board.error(lambda *_: est), int(r["epochs"])) for s in np.atleast_1d(r["seconds"])]

        for budget in args.budgets:
            pairs = gold.pair_simulations(board.task.problem, budget, key=jax.random.key(budget), theta_ref=board.theta_ref, progress=False)
            variance = export(pairs, board, folder)
            for method in args.methods:
                rows = {}
                for seed in args.seeds:
                    peer = [str(PEERS_PYTHON), str(ROOT / "bench/peers/madminer_ratio.py"), str(folder), str(out), "--method", method,
                            "--alpha", str(args.alpha), "--score-variance", str(variance), "--epochs", str(args.epochs),
                            "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--n-workers", str(args.n_workers),
                            "--threads", str(args.torch_threads), "--seed", str(seed)]
                    rows.setdefault("madminer", []).extend(run(peer))
                    env = {**os.environ, "GALTON_CACHE_DIR": str(folder / f"cache-{budget}-{method}-{seed}")}
                    worker = [sys.executable, __file__, "--worker", str(folder), str(out), method, *settings, str(seed)]
                    rows.setdefault("galton cold", []).extend(run([*worker, "1"], env))
                    warm, hot = run([*worker, "2"], env)  # the same fit twice in one process: the second is in memory
                    rows.setdefault("galton warm", []).append(warm)
                    rows.setdefault("galton hot", []).append(hot)
                    for label, values in rows.items():
                        s, mse, epochs = values[-1]
                        print(f"{method} {budget:6d} seed {seed} {label:12s} {s:7.2f} s  MSE {mse:8.4f}  ({epochs} epochs)", flush=True)
                means = {label: np.mean([v[:2] for v in values], axis=0) for label, values in rows.items()}
                peer_s, peer_mse = means["madminer"]
                report("gold_vs_madminer", f"madminer {method} {budget}", peer_s=peer_s, mse=peer_mse)
                for label in ("galton cold", "galton warm", "galton hot"):
                    s, mse = means[label]
                    table.append((method, budget, label, s, peer_s, peer_s / s, mse, peer_mse))
                    report("gold_vs_madminer", f"{label} / madminer, {method} {budget}", galton_s=s, peer_s=peer_s, ratio=peer_s / s,
                           mse=mse, peer_mse=peer_mse)

    print(f"\n{'method':7s} {'budget':>6s} {'galton':12s} {'galton s':>9s} {'madminer s':>10s} {'speed-up':>8s} {'galton MSE':>10s} "
          f"{'madminer MSE':>12s}   (means over seeds {args.seeds}; exact Var log r = {board.variance:.3f})")
    for method, budget, label, s, peer_s, ratio, mse, peer_mse in table:
        print(f"{method:7s} {budget:6d} {label.removeprefix('galton '):12s} {s:9.2f} {peer_s:10.2f} {ratio:7.1f}x {mse:10.4f} {peer_mse:12.4f}")


if __name__ == "__main__":
    main()
