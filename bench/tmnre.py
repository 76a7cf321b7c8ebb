"""TMNRE accuracy: 1-D and 2-D marginal C2ST against the reference posteriors, amortized (one
round) against truncation rounds, and whether truncation pays on posteriors much narrower
than their priors.

    python bench/tmnre.py [--tasks two_moons slcp gaussian_linear slcp_distractors]
                          [--observations 1 2 3 4 5] [--budget 10000] [--rounds 5] [--skip-narrow]
                          [--truncation box correlated] [--tail-mass 1e-3] [--skip-amortized]
                          [--skip-tasks] [--narrow-dims 10 15] [--balance 10] [--embedding deepset|sparse|mlp]
                          [--patience 40] [--decay 0.3] [--decay-patience 10] [--finish 0.1] [--margin 0.25]
                          [--cut-balance 100] [--carry-embedding] [--calibrate] [--key-offset 0 1000] [--min-shrink 0] [--prune 0.1]
                          [--negatives 4] [--variant a|c] [--gamma 1] [--hidden 64] [--depth 2] [--set-width 64]

Part 1 (issue 14, acceptance 1): for each task and observation, the mean C2ST of every 1-D and
every 2-D marginal (two_moons, slcp: all pairs; gaussian_linear, slcp_distractors: all pairs as
well for at most 6 parameters, else the 1-D ones and the pairs of the first 5), at ``budget``
simulations in 1 round and in ``rounds`` rounds, for each ``--truncation`` (box: swyft's;
correlated: the box cut further by the 2-D heads), with ``--tail-mass`` (none by default) as
TMNRE's ``tail_mass`` and ``--balance`` (0 by default) as its ``balance``; ``--embedding deepset``
gives slcp's heads a DeepSet over its four iid draws (slcp_distractors': the same after a learned
linear projection of its 100 values to 8; ``--embedding sparse`` the same with
``nets.Projected(..., sparse=True)``; other tasks keep raw x), ``--embedding mlp``
every task's heads a shared MLP on x; ``--patience``
sets the early-stopping patience of each round's training (TMNRE's default otherwise), ``--decay``
its step-size decay after each ``--decay-patience`` epochs without improvement, ``--finish`` its
fine-tune at a share of the step after early stopping; ``--margin``,
``--cut-balance``, ``--carry-embedding``, ``--pool``, ``--prune``, ``--calibrate``, ``--negatives``, ``--variant``, ``--gamma``, ``--hidden``, ``--depth``, ``--ensemble`` and ``--min-shrink`` set TMNRE's options of those names, ``--set-width`` the DeepSet's width; ``--key-offset``
runs observation k with key k + offset, to see how much a result moves between draws; with several offsets
every observation runs with each, and the means per key set, over all runs and the standard error of the
key sets' means are printed (one observation moves by about ±0.04 between keys, so settings compare only
by such means). These apply to part 1 only.
Part 2 (acceptance 2): a 10-D Gaussian-linear problem with the prior widened 20x and a 15-D one
(1-D marginals only): amortized at 10x the budget (balance 0 and ``--balance``) against truncated
at the budget (``--balance``), scored by the mean 1-D C2ST against the exact Gaussian posterior.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from _report import report
from sbibm import reference_samples

import galton
from galton import nets
from galton.diagnostics import c2st
from galton.methods import TMNRE
from galton.tasks import get

C2ST_SAMPLES = 5000


def marginal_scores(posterior, reference: np.ndarray, key, consistent: bool = False, sizes=(1, 2)) -> dict[tuple[str, ...], float]:
    """C2ST of each estimated marginal of ``sizes`` parameters (``consistent``: `TMNREPosterior.marginal`'s)."""
    draws = posterior.marginal_samples(C2ST_SAMPLES, key=key, consistent=consistent)
    names = posterior.names
    rng = np.random.default_rng(0)
    ref = reference[rng.choice(len(reference), C2ST_SAMPLES, replace=len(reference) < C2ST_SAMPLES)]
    return {m: float(c2st(ref[:, [names.index(n) for n in m]], v)) for m, v in draws.items() if len(m) in sizes}


def marginals_for(names: list[str]) -> list[tuple[str, ...]]:
    pairs = itertools.combinations(names if len(names) <= 6 else names[:5], 2)
    return [(n,) for n in names] + list(pairs)


def embedding_for(task_name: str, kind: str, x_shape: tuple | None = None, width: int = 64):
    """None; for ``deepset`` on slcp a permutation-invariant net over its 4 draws (x is (8,)), on
    slcp_distractors the same after a learned projection of its 100 values to 8 (`nets.Projected`;
    ``sparse``: its product parametrisation); for ``mlp`` an MLP from the flat x to 64 features (width 128, depth 2), shared by the heads."""
    if kind == "mlp":
        return nets.MLP(x_shape, 64, width=128, depth=2, key=jax.random.key(11))
    if kind == "none" or task_name not in ("slcp", "slcp_distractors"):
        return None
    deepset = nets.DeepSet((4, 2), 64, width=width, key=jax.random.key(11))
    if task_name == "slcp_distractors":  # which 8 of the 100 values are the draws is learned
        return nets.Projected((100,), deepset, key=jax.random.key(12), sparse=kind == "sparse")
    return nets.Reshaped((8,), deepset)


def training_for(args) -> dict:
    """TMNRE's training settings with ``--patience``, ``--decay`` and ``--finish``, or none to keep its default."""
    changes = {k: v for k, v in [("patience", args.patience), ("decay", args.decay), ("finish", args.finish)] if v is not None}
    if args.decay is not None:
        changes["decay_patience"] = args.decay_patience
    return {"training": dataclasses.replace(TMNRE().training, **changes)} if changes else {}


def settings_name(args) -> str:
    """The report's suffix for the options that differ from TMNRE's defaults."""
    parts = [
        args.balance and f"balance{args.balance:g}",
        args.patience is not None and f"patience{args.patience}",
        args.tail_mass is not None and f"tail{args.tail_mass:g}",
        args.decay is not None and f"decay{args.decay:g}dp{args.decay_patience}",
        args.finish is not None and f"finish{args.finish:g}",
        args.margin and f"margin{args.margin:g}",
        args.cut_balance is not None and f"cutbalance{args.cut_balance:g}",
        args.carry_embedding and "carry",
        args.pool != "inside" and f"pool{args.pool}",
        args.prune is not None and f"prune{args.prune:g}",
        args.spread and f"spread{args.spread:g}",
        args.calibrate and "calibrate",
        args.negatives > 1 and f"negatives{args.negatives}",
        args.variant != "a" and f"variant{args.variant}-gamma{args.gamma:g}",
        args.hidden != 64 and f"hidden{args.hidden}",
        args.depth != 2 and f"depth{args.depth}",
        args.ensemble > 1 and f"ensemble{args.ensemble}",
        args.min_shrink is not None and f"minshrink{args.min_shrink:g}",
        args.set_width != 64 and f"setwidth{args.set_width}",
        args.consistent and "consistent",
        args.key_offset != [0] and "keys+" + ",".join(map(str, args.key_offset)),
    ]
    return "".join(f"-{name}" for name in parts if name)


def part_one(args) -> None:
    for task_name in args.tasks:
        task = get(task_name)
        runs = [] if args.skip_amortized else [(1, "box")]
        embedding = embedding_for(task_name, args.embedding, np.shape(task.observation(1)), args.set_width)
        for rounds, truncation in runs + [(args.rounds, t) for t in args.truncation]:
            method = TMNRE(marginals=marginals_for(task.names), truncation=truncation, tail_mass=args.tail_mass, balance=args.balance,
                           margin=args.margin, cut_balance=args.cut_balance, carry_embedding=args.carry_embedding, calibrate=args.calibrate, embedding=embedding,
                           negatives=args.negatives, pool=args.pool, prune=args.prune, spread=args.spread, variant=args.variant, gamma=args.gamma, hidden=args.hidden, depth=args.depth, ensemble=args.ensemble,
                           **({} if args.min_shrink is None else {"min_shrink": args.min_shrink}),
                           **training_for(args))
            scores_1d, scores_2d, seconds, heads_2d = [], [], [], []
            for offset, k in itertools.product(args.key_offset, args.observations):
                x_obs = task.observation(k)
                start = time.perf_counter()
                post = galton.infer(task.problem, x_obs, key=jax.random.key(k + offset), method=method, budget=args.budget,
                                    rounds=rounds, progress=False)
                seconds.append(time.perf_counter() - start)
                if args.save:
                    post.save(os.path.join(args.save, f"{task_name}-{truncation}-r{rounds}-obs{k}-keys{offset}"))
                reference = reference_samples(task, k)
                scores = marginal_scores(post, reference, jax.random.key(100 + k))
                s1 = np.mean([v for m, v in scores.items() if len(m) == 1])
                s2 = np.mean([v for m, v in scores.items() if len(m) == 2])
                if args.consistent and any(len(m) == 2 for m in scores):  # the pairs again, with their 1-D heads' margins
                    heads_2d.append(s2)
                    s2 = np.mean(list(marginal_scores(post, reference, jax.random.key(100 + k), True, (2,)).values()))
                scores_1d.append(s1), scores_2d.append(s2)
                volume = post.rounds[-1]["volume"]
                keys = f" keys+{offset}" if len(args.key_offset) > 1 else ""
                own = f" (pair heads' own margins {heads_2d[-1]:.3f})" if heads_2d else ""
                print(f"{task_name:>17s} obs {k}{keys} rounds {rounds} {truncation:>10s}: 1-D {s1:.3f}  2-D {s2:.3f}{own}  "
                      f"prior mass kept {volume:.3g}  {seconds[-1]:.0f} s", flush=True)
            spread = key_set_spread(scores_1d, scores_2d, len(args.key_offset))
            report("tmnre", f"{task_name}-r{rounds}" + ("-correlated" if rounds > 1 and truncation == "correlated" else "")
                   + (f"-{args.embedding}" if embedding is not None else "") + settings_name(args), c2st_1d=round(float(np.mean(scores_1d)), 3), c2st_2d=round(float(np.mean(scores_2d)), 3),
                   galton_s=round(float(np.mean(seconds)), 1), budget=args.budget, **spread,
                   **({"c2st_2d_heads_own_margins": round(float(np.mean(heads_2d)), 3)} if heads_2d else {}))


def key_set_spread(scores_1d: list, scores_2d: list, sets: int) -> dict:
    """With several key sets (runs in key-set order), each set's mean C2ST and the standard error of
    the mean over sets, printed and returned as report figures; nothing for one set."""
    if sets < 2:
        return {}
    means = np.stack([np.reshape(scores_1d, (sets, -1)).mean(1), np.reshape(scores_2d, (sets, -1)).mean(1)], 1)  # (sets, 2)
    error = means.std(0, ddof=1) / np.sqrt(sets)
    print("   key sets' means " + ", ".join(f"{a:.3f} / {b:.3f}" for a, b in means)
          + f"; over all {np.mean(scores_1d):.3f} / {np.mean(scores_2d):.3f}, standard error {error[0]:.3f} / {error[1]:.3f}", flush=True)
    return {"c2st_1d_per_key_set": means[:, 0].round(3).tolist(), "c2st_2d_per_key_set": means[:, 1].round(3).tolist(),
            "c2st_1d_stderr": round(float(error[0]), 4), "c2st_2d_stderr": round(float(error[1]), 4)}


def narrow_problem(dim: int, widen: float):
    """θ ~ N(0, (widen·√0.1)² I), x ~ N(θ, 0.1 I): the exact posterior is Gaussian."""
    prior_var, noise_var = 0.1 * widen**2, 0.1

    def simulate(key, theta):
        return theta + np.sqrt(noise_var) * jax.random.normal(key, theta.shape)

    problem = galton.Simulator(dist.Normal(jnp.zeros(dim), np.sqrt(prior_var)), simulate, name=f"narrow_{dim}")

    def exact(x_obs, n, key):
        shrink = prior_var / (prior_var + noise_var)
        std = np.sqrt(shrink * noise_var)
        return np.asarray(shrink * x_obs + std * jax.random.normal(key, (n, dim)))

    return problem, exact


def part_two(args) -> None:
    for dim in args.narrow_dims:
        problem, exact = narrow_problem(dim, 20.0)
        runs = [(10 * args.budget, 1, balance) for balance in sorted({0.0, args.balance})] + [(args.budget, args.rounds, args.balance)]
        for budget, rounds, balance in runs:  # amortized with and without --balance: the better is the target
            method = TMNRE(marginals=[(n,) for n in problem.names], tail_mass=args.tail_mass, balance=balance)
            scores, seconds = [], []
            for k in args.observations[:2]:
                theta_true = problem.prior.sample(jax.random.key(500 + k))
                x_obs = problem.simulate_flat(jax.random.key(600 + k), theta_true)
                start = time.perf_counter()
                post = galton.infer(problem, x_obs, key=jax.random.key(k), method=method, budget=budget, rounds=rounds, progress=False)
                seconds.append(time.perf_counter() - start)
                ref = exact(np.asarray(x_obs), C2ST_SAMPLES, jax.random.key(700 + k))
                s = marginal_scores(post, ref, jax.random.key(800 + k))
                scores.append(np.mean(list(s.values())))
                print(f"narrow {dim}-D (prior 20x wider) obs {k}: {budget} sims in {rounds} round(s), balance {balance:g}: mean 1-D C2ST "
                      f"{scores[-1]:.3f}  prior mass kept {post.rounds[-1]['volume']:.3g}  {seconds[-1]:.0f} s", flush=True)
            report("tmnre", f"narrow{dim}-{budget}-r{rounds}-balance{balance:g}", c2st_1d=round(float(np.mean(scores)), 3),
                   galton_s=round(float(np.mean(seconds)), 1), budget=budget)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["two_moons", "slcp", "gaussian_linear", "slcp_distractors"])
    parser.add_argument("--observations", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-narrow", action="store_true", help="only part 1")
    parser.add_argument("--truncation", nargs="+", default=["box", "correlated"], choices=["box", "correlated"])
    parser.add_argument("--narrow-dims", type=int, nargs="+", default=[10, 15], help="part 2's problem sizes")
    parser.add_argument("--skip-tasks", action="store_true", help="only part 2")
    parser.add_argument("--tail-mass", type=float, default=None, help="TMNRE's tail_mass (a mass rule beside ε)")
    parser.add_argument("--skip-amortized", action="store_true", help="part 1 without the one-round runs")
    parser.add_argument("--balance", type=float, default=0.0, help="TMNRE's balance (BNRE's λ), 0 for swyft's loss")
    parser.add_argument("--embedding", choices=["none", "deepset", "sparse", "mlp"], default="none",
                        help="deepset: slcp's x seen as its 4 iid 2-D draws, a DeepSet (width 64) shared by the heads "
                             "(slcp_distractors: after a learned projection of x to 8 values; sparse: Projected's sparse=True); "
                             "mlp: an MLP on the flat x (every task), shared by the heads")
    parser.add_argument("--patience", type=int, default=None, help="early-stopping patience of each round (TMNRE's default: 20)")
    parser.add_argument("--decay", type=float, default=None, help="Training's decay: the step size's factor after each plateau")
    parser.add_argument("--finish", type=float, default=None, help="Training's finish: after early stopping, a fine-tune from "
                        "the best weights at this share of the step size")
    parser.add_argument("--decay-patience", type=int, default=10, help="epochs without improvement before each --decay (here 10; Training's default is 5)")
    parser.add_argument("--cut-balance", type=float, default=None, help="TMNRE's cut_balance: BNRE's λ in the rounds that cut")
    parser.add_argument("--negatives", type=int, default=1, help="TMNRE's negatives: marginal pairs per joint pair")
    parser.add_argument("--variant", choices=["a", "c"], default="a", help="TMNRE's variant: a (swyft's binary loss) or c (NRE-C)")
    parser.add_argument("--min-shrink", type=float, default=None, help="TMNRE's min_shrink (0: every round runs)")
    parser.add_argument("--hidden", type=int, default=64, help="TMNRE's hidden: each head's MLP width")
    parser.add_argument("--depth", type=int, default=2, help="TMNRE's depth: each head's MLP's hidden layers")
    parser.add_argument("--ensemble", type=int, default=1, help="TMNRE's ensemble: networks the last round trains, their log-ratios averaged")
    parser.add_argument("--pool", choices=["inside", "all"], default="inside", help="TMNRE's pool: train each round on the "
                        "simulations inside its proposal (swyft's) or on all simulations so far")
    parser.add_argument("--prune", type=float, default=None, help="TMNRE's prune: the last round's sparse projection pruned "
                        "below this share of each output's largest weight, then trained again (--embedding sparse)")
    parser.add_argument("--spread", type=float, default=0.0, help="TMNRE's spread: the weight of a Projected embedding's "
                        "row spread (each row's l1/l2 - 1) in the loss, towards each output reading one value of x")
    parser.add_argument("--set-width", type=int, default=64, help="the DeepSet's width (--embedding deepset or sparse)")
    parser.add_argument("--gamma", type=float, default=1.0, help="TMNRE's gamma (NRE-C's class weight, --variant c)")
    parser.add_argument("--carry-embedding", action="store_true", help="TMNRE's carry_embedding: each round starts from the last one's embedding")
    parser.add_argument("--calibrate", action="store_true", help="TMNRE's calibrate: the last round's heads temperature-scaled on held-out rows")
    parser.add_argument("--key-offset", type=int, nargs="+", default=[0],
                        help="observation k runs with key k + this (simulations and training): another draw of the same settings; "
                             "several: every observation with each, and the mean over key sets with its standard error")
    parser.add_argument("--consistent", action="store_true", help="score each pair with its 1-D heads' margins "
                        "(TMNREPosterior.marginal(consistent=True)), and print the pair heads' own beside")
    parser.add_argument("--save", default=None, help="a folder: each run's posterior saved there (for rescoring)")
    parser.add_argument("--margin", type=float, default=0.0, help="TMNRE's margin: each new box widened by this share of its width a side")
    args = parser.parse_args()
    if not args.skip_tasks:
        part_one(args)
    if not args.skip_narrow:
        part_two(args)


if __name__ == "__main__":
    main()
