"""Runs in the peers' environment (.venv-peers): sbi's NPE on simulations given as .npz.

    python bench/peers/sbi_npe.py IN.npz OUT.npz [--flow maf|nsf] [--threads N]

IN holds theta (n, d), x (n, d_x), x_obs (d_x,), low (d,), high (d,) for a box-uniform
prior; OUT gets samples (10000, d) and the timings. Prints nothing but errors.
"""

import argparse
import time

import numpy as np
import torch
from sbi.inference import NPE
from sbi.utils import BoxUniform


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("inp")
    parser.add_argument("out")
    parser.add_argument("--flow", default="maf")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-samples", type=int, default=10_000)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    data = np.load(args.inp)
    prior = BoxUniform(torch.as_tensor(data["low"]), torch.as_tensor(data["high"]))
    theta, x = torch.as_tensor(data["theta"]), torch.as_tensor(data["x"])
    start = time.perf_counter()
    inference = NPE(prior=prior, density_estimator=args.flow, show_progress_bars=False)
    estimator = inference.append_simulations(theta, x).train()  # sbi's defaults
    train_seconds = time.perf_counter() - start
    posterior = inference.build_posterior(estimator)
    start = time.perf_counter()
    samples = posterior.sample((args.n_samples,), x=torch.as_tensor(data["x_obs"]), show_progress_bars=False)
    sample_seconds = time.perf_counter() - start
    np.savez(
        args.out,
        samples=samples.numpy(),
        train_seconds=train_seconds,
        sample_seconds=sample_seconds,
        epochs=inference.summary["epochs_trained"][-1],
    )


if __name__ == "__main__":
    main()
