"""Learned summaries on the log-normal field (issue 15, acceptance 3): which compressor loss
gives summaries from which NPE recovers the full-field posterior (NUTS over θ and the field).

    python bench/summaries.py [--observations 1 2] [--train 5000] [--budget 2000]
                              [--epochs 30] [--smc-budget 100000] [--reference 2000]
                              [--patience 5] [--channels 4 8 16] [--losses mse ... nass] [--skip-raw]

For each loss (mse, mae, gnll, vmim, nass) a compressor, a CNN on the 32×32 field (three
conv stages of 4, 8, 16 channels, 64 features, then the loss's head; 8, 16, 32 channels took
10 s an epoch per 4,500 fields on 2 cores), is trained on ``train``
simulations; then the same NPE (a neural spline flow, sbi's size) is trained on ``budget``
fresh simulations with the frozen compressor as its embedding, and scored by C2ST against
the NUTS reference at the observation. Baselines: NPE on the raw field with the same CNN
trained end to end, on ``budget`` and on ``train + budget`` simulations (all the compressor
route used). Then SMC-ABC with ``smc-budget`` simulations on the VMIM summaries against SMC-ABC
on hand-picked ones (mean, variance, 6 log power-spectrum bins: lognormal_field.power_spectrum).
The NUTS reference (4 chains, 500 warm-up) is cached in runs/cache. C2ST on ``reference``
draws a side.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import jax
import numpy as np
from _report import report

import galton
from galton import nets, summaries
from galton.diagnostics import c2st
from galton.methods import NPE, SMCABC
from galton.tasks import lognormal_field as lnf
from galton.train import Training

CACHE = Path(__file__).resolve().parents[1] / "runs" / "cache"


def cnn(key, channels=(4, 8, 16)):
    return nets.Reshaped((1024,), nets.CNN2d((32, 32), 64, channels=tuple(channels), key=key))


def reference(task, k: int, n: int) -> tuple[np.ndarray, dict]:
    path = CACHE / f"lognormal_field_32_obs{k}_{n}.npz"
    if path.exists():
        with np.load(path, allow_pickle=True) as f:
            return f["draws"], f["info"].item()
    start = time.perf_counter()
    draws, info = lnf.nuts_posterior(task.observation(k), n, jax.random.key(1000 + k), return_info=True)
    info["seconds"] = time.perf_counter() - start
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, draws=np.asarray(draws), info=np.array(info, dtype=object))
    return np.asarray(draws), info


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--budget", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--smc-budget", type=int, default=100_000)
    parser.add_argument("--reference", type=int, default=2000)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--channels", type=int, nargs=3, default=[4, 8, 16], help="the CNN's three conv stages")
    parser.add_argument("--losses", nargs="+", default=[loss for loss in summaries.LOSSES if loss != "sally"],
                        choices=[loss for loss in summaries.LOSSES if loss != "sally"], help="the compressors to train (SMC-ABC needs vmim)")
    parser.add_argument("--skip-raw", action="store_true", help="leave out the NPE baselines on the raw field")
    args = parser.parse_args()
    task = galton.tasks.get("lognormal_field")
    problem = task.problem
    training = Training(learning_rate=1e-3, batch_size=128, patience=args.patience, max_epochs=args.epochs)
    train_sims = galton.simulate(problem, args.train, key=jax.random.key(0), progress=False)
    npe_sims = galton.simulate(problem, args.budget, key=jax.random.key(1), progress=False)
    n = args.reference
    scores: dict[str, list[float]] = {}
    compressors = {}
    for loss in args.losses:
        start = time.perf_counter()
        compressors[loss] = summaries.fit(train_sims, loss=loss, embedding=cnn(jax.random.key(2), args.channels), key=jax.random.key(3),
                                          training=training, problem=problem.name, progress=False)
        h = compressors[loss].history
        print(f"compressor {loss:5s}: {h['epochs']} epochs, best validation loss {min(h['validation_loss']):.4f}, {time.perf_counter() - start:.0f} s", flush=True)
    methods = {f"npe on {loss} summaries": (NPE(embedding=c.frozen()), npe_sims) for loss, c in compressors.items()}
    if not args.skip_raw:
        methods[f"npe on the raw field (CNN), {args.budget}"] = (NPE(embedding=cnn(jax.random.key(2), args.channels)), npe_sims)
        both = galton.Simulations.concatenate([train_sims, npe_sims])
        methods[f"npe on the raw field (CNN), {len(both)}"] = (NPE(embedding=cnn(jax.random.key(2), args.channels)), both)
    posteriors = {}
    for label, (method, sims) in methods.items():  # amortized: fitted once, conditioned on each observation
        start = time.perf_counter()
        model, history = method.fit(sims, problem.prior, key=jax.random.key(4), progress=False)
        posteriors[label] = method.posterior(model, problem.prior, [history])
        print(f"{label}: {history['epochs']} epochs, {time.perf_counter() - start:.0f} s", flush=True)
    for k in args.observations:
        ref, info = reference(task, k, n)
        print(f"observation {k}: NUTS reference R-hat {info['r_hat']}, ESS {info['ess_bulk']}, {info['divergences']} divergences"
              + (f", {info['seconds']:.0f} s" if "seconds" in info else ""), flush=True)
        x_o = task.observation(k)
        for label, posterior in posteriors.items():
            draws = np.asarray(posterior.condition(x_o).sample(n, key=jax.random.key(5)))
            score = float(c2st(ref, draws))
            scores.setdefault(label, []).append(score)
            print(f"obs {k} {label:36s} C2ST {score:.3f}", flush=True)
        abc = {"smc-abc on vmim summaries": compressors["vmim"]} if "vmim" in compressors else {}
        for label, summary in {**abc, "smc-abc on power spectrum": lnf.power_spectrum}.items():
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                post = galton.infer(problem, x_o, key=jax.random.key(6), method=SMCABC(population=1000, summary=summary), budget=args.smc_budget, progress=False)
            score = float(c2st(ref, np.asarray(post.sample(n, key=jax.random.key(7)))))
            scores.setdefault(label, []).append(score)
            print(f"obs {k} {label:36s} C2ST {score:.3f}  ({time.perf_counter() - start:.0f} s, ε {post.info['epsilon']:.3g}, "
                  f"{len(post.info['generations']) - 1} generations)", flush=True)
    print(f"\nmean C2ST against the NUTS full-field posterior over observations {args.observations}")
    for label, values in scores.items():
        print(f"  {label:36s} {np.mean(values):.3f}")
        report("summaries", label, c2st=float(np.mean(values)), observations=len(values))


if __name__ == "__main__":
    main()
