"""Runs in the peers' environment (.venv-peers): swyft 0.4.5's TMNRE on one sbibm observation.

    python bench/peers/swyft_tmnre.py IN.npz OUT.npz --task TASK --rounds R --per-round N \
        --hidden H --epochs E --batch-size B --seed S [--embedding identity|mlp] [--blocks 2] \
        [--prior-samples 100000] [--n-samples 10000] [--threads 1] [--einsum-channels]

IN holds x_obs (d_x,), the prior as either low (d,), high (d,) (box uniform) or loc (d,), scale (d,)
(independent Gaussians, scale = standard deviation), and marginals, an int array (m, 2) of column
indices with -1 padding for 1-D rows, e.g. [[0, -1], [1, -1], [0, 1]]. Tasks: two_moons,
gaussian_linear, slcp, slcp_distractors (NumPy simulators from TASKS.md, in _tasks_numpy.py).

The procedure is swyft's own truncation loop (its notebook "0H - Truncation and bounds"): each
round draws N new simulations from swyft.RectBoundSampler on the current box, trains a fresh
network on that round's simulations only, evaluates it on prior draws from the same box and
shrinks the box with swyft.collect_rect_bounds (1-D marginals, threshold 1e-6). A 1-D ratio is
learnt for every parameter (truncation needs all of them), and a LogRatioEstimator_Ndim head for
the 2-D rows of `marginals`. The --prior-samples draws fed to infer follow RectBoundSampler's rule,
vectorised; resampling them by their normalised ratio weights gives --n-samples per marginal.
torch runs on one thread by default: on a busy 2-core machine two threads made training 5-40x
slower at random (a 1 s fit took up to 44 s). swyft's heads (LinearWithChannel) multiply by a
weight tensor broadcast over the batch, which dominates the run time on a CPU; --einsum-channels
swaps in the same product as an einsum (an explicit departure from swyft as shipped).

OUT gets samples_1d (n, d), samples_2d (m2, n, 2) in the order given, seconds (first simulation
to the end of sampling, imports excluded), bounds (R, d, 2): the box each round simulated from
(round 0: the prior's support), bounds_final (d, 2): the box the last round's network gives,
simulations (R * N) and epochs (R,). Prints nothing but errors.
"""

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # swyft.Simulator.sample wraps its loop in tqdm

import argparse
import contextlib
import io
import logging
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")  # pkg_resources, lightning's "few workers" notes, ...

import numpy as np
import scipy.stats
import torch

import swyft
from swyft.networks import OnlineStandardizingLayer

from _tasks_numpy import TASKS, simulator_fn  # this folder: the script's directory is on sys.path

for _name in ("pytorch_lightning", "lightning_fabric", "lightning"):
    logging.getLogger(_name).setLevel(logging.ERROR)

THRESHOLD = 1e-6  # swyft's default in collect_rect_bounds / get_rect_bounds


def _channel_linear_einsum(self, x):
    """The same map as swyft's LinearWithChannel.forward, y[..., c, o] = Σ_i W[c, o, i] x[..., c, i] + b[c, o].
    swyft's matmul broadcasts W over the batch (one weight copy per sample): ~90x slower on a CPU."""
    return torch.einsum("coi,...ci->...co", self.weights, x) + self.bias


# ---------------------------------------------------------------- swyft pieces


class TaskSimulator(swyft.Simulator):
    """θ from the (truncated) prior, x from the task simulator: swyft's graph, one node each."""

    def __init__(self, prior, sim, bounds=None):
        super().__init__()
        self.transform_samples = swyft.to_numpy32
        self.sample_z = swyft.RectBoundSampler(prior, bounds=bounds)
        self.sim = sim

    def build(self, graph):
        z = graph.node("z", self.sample_z)
        graph.node("x", self.sim, z)


class Network(swyft.SwyftModule):
    """Shared embedding of x (z-scored; identity or a 2-layer MLP of width H), then swyft's heads."""

    def __init__(self, x_dim, d, pairs, hidden, blocks, embedding):
        super().__init__()
        self.standardize = OnlineStandardizingLayer(torch.Size([x_dim]))
        if embedding == "mlp":
            self.embed = torch.nn.Sequential(
                torch.nn.Linear(x_dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden)
            )
            features = hidden
        else:
            self.embed = torch.nn.Identity()
            features = x_dim
        self.lre_1d = swyft.LogRatioEstimator_1dim(
            num_features=features, num_params=d, varnames="z", hidden_features=hidden, num_blocks=blocks
        )
        self.lre_2d = (
            swyft.LogRatioEstimator_Ndim(
                num_features=features, marginals=pairs, varnames="z", hidden_features=hidden, num_blocks=blocks
            )
            if pairs
            else None
        )

    def forward(self, A, B):
        f = self.embed(self.standardize(A["x"]))
        out = {"lrs_1d": self.lre_1d(f, B["z"])}
        if self.lre_2d is not None:
            out["lrs_2d"] = self.lre_2d(f, B["z"])
        return out


def make_prior(data):
    if "low" in data.files:
        low, high = np.asarray(data["low"], float), np.asarray(data["high"], float)
        return scipy.stats.uniform(loc=low, scale=high - low), np.stack([low, high], -1)
    loc, scale = np.asarray(data["loc"], float), np.asarray(data["scale"], float)
    support = np.stack([np.full_like(loc, -np.inf), np.full_like(loc, np.inf)], -1)
    return scipy.stats.norm(loc=loc, scale=scale), support


def truncated_prior_draws(prior, box, n):
    """n draws of the prior restricted to box, by RectBoundSampler's rule (u uniform in [F(lo), F(hi)],
    θ = F⁻¹(u)) but vectorised: swyft.Simulator.sample runs one draw at a time (about 6 s per 100k)."""
    d = np.atleast_1d(prior.rvs()).size
    lo, hi = (np.zeros(d), np.ones(d)) if box is None else (prior.cdf(box[:, 0]), prior.cdf(box[:, 1]))
    u = lo + np.random.rand(n, d) * (hi - lo)
    return swyft.Samples(z=prior.ppf(u).astype(np.float32))


def resample(lrs, parnames, n):
    """Weighted resampling of swyft's (params, weights) for one marginal."""
    params, weights = swyft.get_weighted_samples(lrs, parnames)
    idx = torch.multinomial(weights.double(), n, replacement=True)
    return params[idx].detach().numpy()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("inp")
    parser.add_argument("out")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=1000)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=2, help="residual blocks per head (swyft's default 2)")
    parser.add_argument("--embedding", choices=["identity", "mlp"], default="identity")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prior-samples", type=int, default=100_000, help="prior draws fed to infer per round")
    parser.add_argument("--n-samples", type=int, default=10_000)
    parser.add_argument(
        "--einsum-channels", action="store_true",
        help="replace swyft's per-marginal linear layers' forward by an equal einsum (not swyft as shipped)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    if args.einsum_channels:
        swyft.networks.LinearWithChannel.forward = _channel_linear_einsum
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    data = np.load(args.inp)
    prior, support = make_prior(data)
    d = support.shape[0]
    x_obs = np.asarray(data["x_obs"], np.float32)
    marginals = np.asarray(data["marginals"], int).reshape(-1, 2)
    pairs = tuple((int(i), int(j)) for i, j in marginals if j >= 0)
    sim = simulator_fn(args.task)
    obs = swyft.Sample(x=x_obs)

    box, boxes, epochs = None, [], []
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        for r in range(args.rounds):
            boxes.append(support if box is None else box)
            simulator = TaskSimulator(prior, sim, bounds=box)
            samples = simulator.sample(args.per_round)
            dm = swyft.SwyftDataModule(samples, batch_size=args.batch_size, shuffle=True)
            network = Network(x_obs.size, d, pairs, args.hidden, args.blocks, args.embedding)
            trainer = swyft.SwyftTrainer(
                accelerator="cpu",
                devices=1,
                max_epochs=args.epochs,
                logger=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                default_root_dir=os.path.join(tmp, f"round{r}"),
            )
            trainer.fit(network, dm)  # AdamW, early stopping on val_loss, best checkpoint reloaded
            epochs.append(trainer.current_epoch)
            prior_samples = truncated_prior_draws(prior, box, args.prior_samples)
            predictions = trainer.infer(network, obs, prior_samples)
            new_box = swyft.collect_rect_bounds(predictions["lrs_1d"], "z", (d,), threshold=THRESHOLD)
            box = np.asarray(new_box, dtype=float)
        samples_1d = np.concatenate(
            [resample(predictions["lrs_1d"], f"z[{i}]", args.n_samples) for i in range(d)], axis=1
        )
        samples_2d = np.stack(
            [resample(predictions["lrs_2d"], [f"z[{i}]", f"z[{j}]"], args.n_samples) for i, j in pairs]
        ) if pairs else np.zeros((0, args.n_samples, 2))
        seconds = time.perf_counter() - start

    np.savez(
        args.out,
        samples_1d=samples_1d.astype(np.float32),
        samples_2d=samples_2d.astype(np.float32),
        seconds=seconds,
        bounds=np.stack(boxes),
        bounds_final=box,
        simulations=args.rounds * args.per_round,
        epochs=np.asarray(epochs),
    )


if __name__ == "__main__":
    main()
