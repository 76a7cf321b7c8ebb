"""Runs in the peers' environment (.venv-peers): madminer 0.9.6's ParameterizedRatioEstimator
(RASCAL or ALICES, PyTorch) on pairs that galton made.

    python bench/peers/madminer_ratio.py DIR OUT.npz --method rascal|alices --alpha 0.1 \
        --score-variance V [--epochs 50] [--batch-size 128] [--lr 1e-3] [--validation-split 0.1] \
        [--clip 5] [--n-workers 0] [--threads 1] [--seed 0]

DIR holds madminer's training files as its SampleAugmenter writes them: x.npy (n, n_x),
theta.npy (n, 1) the numerator θ0, y.npy (n, 1) with 0 for x ~ p(x|θ0) and 1 for x ~ p(x|θ1),
r_xz.npy (n, 1) the joint ratio p(x, z|θ0) / p(x, z|θ1) and t_xz.npy (n, 1) the joint score at θ0;
madminer is handed the file names. θ1 is the fixed reference, which its network does not see.
x_eval.npy and theta_eval.npy (m, ·) are where log r̂(x|θ0, θ1) is evaluated afterwards.

ParameterizedRatioEstimator(n_hidden=(64, 64), activation="tanh").train(method, ...) with
optimizer="adam", initial_lr = final_lr = --lr (a constant rate, as galton's), --epochs epochs,
batch_size, validation_split, early_stopping=False, clip_gradient=--clip and madminer's default
input and parameter scaling. madminer weights the raw squared error of the score, in units of its
scaled θ (t · σ_θ, σ_θ the standard deviation of theta.npy); galton weights it by
1 / Var(t) in θ's own units, so madminer gets alpha = --alpha / (--score-variance · σ_θ²) and
the score terms of the two losses are the same. n_workers: madminer's DataLoader processes
(its default, 8, forks them anew each epoch; 0 loads batches in this process, faster here);
threads: torch's intra-op threads (1: on 2 busy cores, 2 threads made training 15x slower).

OUT gets log_r (m,) at the evaluation points, seconds (the train call alone, imports and
evaluation excluded), epochs, alpha (madminer's) and train_loss, validation_loss per epoch.
"""

import argparse
import logging
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import numpy as np
import torch

from madminer.ml import ParameterizedRatioEstimator

logging.getLogger("madminer").setLevel(logging.WARNING)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("out")
    parser.add_argument("--method", choices=["rascal", "alices"], required=True)
    parser.add_argument("--alpha", type=float, default=0.1, help="galton's alpha, in units of Var(t)")
    parser.add_argument("--score-variance", type=float, required=True, help="Var(t) of galton's score labels")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--validation-split", type=float, default=0.1)
    parser.add_argument("--clip", type=float, default=5.0)
    parser.add_argument("--n-workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)  # madminer's validation split
    torch.manual_seed(args.seed)  # the network's initialisation and the batch order
    d = Path(args.dir)
    theta_std = float(np.maximum(np.std(np.load(d / "theta.npy"), axis=0), 1e-6)[0])  # as madminer scales θ
    alpha = args.alpha / (args.score_variance * theta_std**2)
    estimator = ParameterizedRatioEstimator(n_hidden=(64, 64), activation="tanh")
    start = time.perf_counter()
    train_loss, val_loss = estimator.train(
        args.method, x=str(d / "x.npy"), y=str(d / "y.npy"), theta=str(d / "theta.npy"),
        r_xz=str(d / "r_xz.npy"), t_xz=str(d / "t_xz.npy"), alpha=alpha, optimizer="adam",
        n_epochs=args.epochs, batch_size=args.batch_size, initial_lr=args.lr, final_lr=args.lr,
        validation_split=args.validation_split, early_stopping=False, clip_gradient=args.clip,
        n_workers=args.n_workers, verbose="none",
    )
    seconds = time.perf_counter() - start
    log_r, _ = estimator.evaluate_log_likelihood_ratio(np.load(d / "x_eval.npy"), np.load(d / "theta_eval.npy"), test_all_combinations=False)
    np.savez(args.out, log_r=np.asarray(log_r, np.float64).reshape(-1), seconds=seconds, epochs=len(train_loss), alpha=alpha,
             train_loss=np.asarray(train_loss, float), validation_loss=np.asarray(val_loss, float))


if __name__ == "__main__":
    main()
