"""Mining gold (issue 16): how many simulations each estimator needs for the likelihood ratio,
score-augmented NPE against NPE, and Fisher information against the exact one.

    python bench/gold.py [--tasks galton_board state_space] [--budgets 1000 3000 10000 30000 100000]
                         [--methods carl rolr alice cascal rascal alices scandal npe score_npe]
                         [--fisher-seeds 5] [--fisher-sims 100000] [--skip-fisher] [--skip-c2st]
                         [--coverage-toys 500] [--coverage-budget 30000] [--coverage-methods wilks neyman]
                         [--coverage-seeds 23 24 25] [--ensemble 1] [--partners 32] [--latent-steps 100]
                         [--c2st-seeds 4]

1. Ratio error. Each method trains on ``budget`` simulations and estimates log r̂(x|θ0, θ_ref);
   the error is the mean squared difference from the exact log ratio over a fixed set of θ0 and
   held-out x drawn half from p(x|θ0), half from p(x|θ_ref). galton_board (20 rows, one ball):
   θ0 on 19 grid points in [−0.9, 0.9], θ_ref = 0, the expectation over x taken exactly over the
   21 slots; state_space (20 steps, 3 parameters): 20 θ0 drawn from the prior, θ_ref = the
   prior's centre, 200 held-out x per θ0, the exact ratio by the Kalman filter. The ratio
   family (CARL .. ALICES) is trained with θ1 = θ_ref; ALICES+ is ALICES with ``--partners``
   rows per simulation (`galton.methods.gold.mixture`, up to 10,000 simulations: past that the
   rows outgrow a 2-core machine's patience), in batches of 50 · partners with patience 50 (its
   weighted validation loss is noisy: with 20, some training seeds stopped at twice the error); SCANDAL and NLE give
   log q(x|θ0) − log q(x|θ_ref), NPE and score-augmented NPE the same through q(θ|x)/p(θ).
   On the board x is an integer slot: SCANDAL dequantises it (x + U(−½, ½)) and is evaluated
   at the integer, the cell's centre. SCANDAL and NLE use neural splines on the board and MAF
   (affine) on the state-space model, whose x | θ is Gaussian.
2. C2ST of NPE and score-augmented NPE against the exact posterior (grid / NUTS on the exact
   likelihood) at observation 1, per budget, for ``--c2st-seeds`` training keys each.
   ``--latent-steps K`` (state_space): SCANDAL's, score-augmented NPE's, CASCAL's, RASCAL's and
   ALICES's score labels and ROLR's, RASCAL's, ALICE's and ALICES's ratio labels are each
   averaged over K NUTS draws of z | x, θ (`galton.latent_chains`, `gold.pairs.averaged_pair_labels`)
   before training; CARL and NLE see the same simulations.
3. Fisher information of state_space at θ = (0.7, 0.8, 0.5): "truth" (the joint score's
   covariance) against the exact information of (x, s), and SALLY (a score regressor trained on
   ``--fisher-sims`` simulations at θ) and "chains" (5,000 simulations, each score the mean over
   either half of 100 NUTS draws of z | x, θ; no training) against the exact information of x; error per entry
   |ΔI_ij| / √(I_ii I_jj) (the relative error on the diagonal), mean over seeds.
"""

from __future__ import annotations

import argparse
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from _report import report

import galton
from galton import nets, summaries
from galton.diagnostics import c2st
from galton.latent_chains import averaged_scores
from galton.methods import NLE, NPE, gold
from galton.tasks import galton_board as gb
from galton.tasks import state_space as ss
from galton.train import Training

RATIO = ("carl", "rolr", "alice", "cascal", "rascal", "alices")
# the ratio estimators whose labels the chains average, and which ratio label each reads (CASCAL's
# loss reads none: it trains on either set, whose score labels are the same chains' with the same key)
AVERAGED = {"rolr": "rolr", "rascal": "rolr", "alice": "alice", "alices": "alice", "cascal": None}
MIXTURE = "alices+"  # ALICES with partners: every simulation weighted at many θ0


def training(budget: int) -> Training:
    return Training(learning_rate=1e-3, batch_size=128 if budget < 30_000 else 256, patience=20, max_epochs=500)


class Board:
    name, theta_ref = "galton_board", np.array([0.0], np.float32)

    def __init__(self):
        self.task = galton.tasks.get("galton_board")
        self.grid = np.linspace(-0.9, 0.9, 19, dtype=np.float32)
        probs = np.asarray(jax.vmap(gb.slot_probabilities)(jnp.asarray(self.grid)))
        ref = np.asarray(gb.slot_probabilities(0.0))
        self.exact = np.log(probs) - np.log(ref)[None]  # (19, 21)
        self.weight = 0.5 * (probs + ref[None])
        self.x = np.arange(21, dtype=np.float32)[None, :, None].repeat(19, 0)  # (19, 21, 1)
        self.theta0 = np.broadcast_to(self.grid[:, None, None], (19, 21, 1))
        mean = (self.exact * self.weight).sum(1, keepdims=True)
        self.variance = float((((self.exact - mean) ** 2) * self.weight).sum(1).mean())

    def error(self, log_ratio) -> float:
        est = np.asarray(log_ratio(self.x, self.theta0, np.broadcast_to(self.theta_ref, self.theta0.shape)))
        return float((((est - self.exact) ** 2) * self.weight).sum(1).mean())


class StateSpace:
    name = "state_space"

    @staticmethod
    def centre() -> np.ndarray:
        return np.asarray((ss.LOW + ss.HIGH) / 2, np.float32)

    def __init__(self):
        self.task = galton.tasks.get("state_space")
        self.theta_ref = self.centre()
        program = self.task.problem
        self.theta0 = np.asarray(program.prior.sample(jax.random.key(7), (20,)))
        xs = []
        for i, t in enumerate(self.theta0):
            for j, at in enumerate((t, self.theta_ref)):
                sims = galton.simulate(program, key=jax.random.key(100 + 2 * i + j), theta=np.tile(at, (100, 1)), progress=False)
                xs.append(sims.x)
        self.x = np.stack([np.concatenate(xs[2 * i: 2 * i + 2]) for i in range(20)])  # (20, 200, 20)
        lml = jax.vmap(jax.vmap(ss.log_marginal_likelihood, (0, None)), (0, 0))
        self.exact = np.asarray(lml(jnp.asarray(self.x), jnp.asarray(self.theta0))) - np.asarray(
            jax.vmap(jax.vmap(ss.log_marginal_likelihood, (0, None)), (0, None))(jnp.asarray(self.x), jnp.asarray(self.theta_ref)))
        self.variance = float(self.exact.var(axis=1).mean())

    def error(self, log_ratio) -> float:
        t0 = np.broadcast_to(self.theta0[:, None], (*self.x.shape[:2], 3))
        est = np.asarray(log_ratio(self.x, t0, np.broadcast_to(self.theta_ref, t0.shape)))
        return float(((est - self.exact) ** 2).mean())


def log_ratio_of(name: str, method, net, prior, dequantized: bool):
    """A function (x, θ0, θ1) -> log r̂ for the trained network of ``method``."""
    if name in RATIO or name == MIXTURE:
        return lambda x, t0, t1: gold.log_ratio(net, jnp.asarray(x), jnp.asarray(t0), jnp.asarray(t1))
    if name in ("scandal", "nle"):  # a dequantised flow is read at the integer x: its cell's centre
        return lambda x, t0, t1: net.log_prob(jnp.asarray(x), jnp.asarray(t0)) - net.log_prob(jnp.asarray(x), jnp.asarray(t1))
    return lambda x, t0, t1: (net.log_prob(jnp.asarray(t0), jnp.asarray(x)) - net.log_prob(jnp.asarray(t1), jnp.asarray(x))
                              - prior.log_prob(jnp.asarray(t0)) + prior.log_prob(jnp.asarray(t1)))


def make_method(name: str, budget: int, problem, board: bool, theta_ref, ensemble: int = 1, partners: int = 32):
    t = training(budget)
    if name == MIXTURE:  # as many steps per epoch as without partners, at a smaller step
        return gold.ALICES(theta_ref=tuple(theta_ref), partners=partners, ensemble=ensemble,
                           training=Training(learning_rate=5e-4, batch_size=50 * partners, patience=50, max_epochs=500))
    if name in RATIO:
        return galton.methods.get(name, theta_ref=tuple(theta_ref), training=t, ensemble=ensemble)
    # On the state-space model, x | θ is Gaussian: one affine MAF step per dimension is exact there.
    # With neural splines, SCANDAL's log-likelihood erred by 1.50 (sd, held-out x) at 30,000
    # simulations against 0.90 with MAF, and its Wilks sets over 10 series covered 0.53 at 68 %.
    flow = "nsf" if board else "maf"
    if name == "scandal":
        return gold.SCANDAL(training=t, dequantize=board, flow=flow)
    if name == "nle":
        return NLE(flow=flow, training=t)
    if name == "score_npe":
        return gold.ScoreNPE(training=t)
    return NPE(training=t)


def ratio_errors(bench, methods, budgets, c2st_too: bool, ensemble: int = 1, partners: int = 32, latent_steps: int = 0,
                 c2st_seeds: int = 1):
    program = bench.task.problem
    board = bench.name == "galton_board"
    chains = latent_steps and not board  # the board's latents (the ball's path) are discrete
    x_o = bench.task.observation(1)
    reference = np.asarray(bench.task.reference_posterior(x_o, 2000, key=jax.random.key(11))) if c2st_too else None
    for budget in budgets:
        pairs = gold.pair_simulations(program, budget, key=jax.random.key(budget), theta_ref=bench.theta_ref, progress=False) \
            if any(m in RATIO for m in methods) else None
        averaged_pairs = {}  # the pairs' labels averaged likewise, per ratio label, from one set of chains
        kinds = dict.fromkeys(AVERAGED[m] for m in methods if m in AVERAGED)
        kinds = [k for k in kinds if k] or list(kinds)
        if chains and pairs is not None and kinds:
            start = time.perf_counter()
            averaged_pairs = gold.pairs.averaged_pair_label_sets(program, pairs, key=jax.random.key(budget + 3), steps=latent_steps,
                                                                 ratios=kinds, progress=False)
            print(f"{bench.name:13s} chains of {latent_steps} steps on {budget} pairs ({', '.join(k or 'scores' for k in kinds)}): "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
        plain = galton.simulate(program, budget, key=jax.random.key(budget + 1), augment="score", keep_latents=bool(chains), progress=False)
        if chains and any(m in ("scandal", "score_npe") for m in methods):  # the same simulations, their labels averaged over z | x, θ
            start = time.perf_counter()
            plain = averaged_scores(program, plain, key=jax.random.key(budget + 2), steps=latent_steps, progress=False)
            print(f"{bench.name:13s} chains of {latent_steps} steps on {budget} simulations: {time.perf_counter() - start:.0f} s, "
                  f"acceptance {plain.extras['acceptance'].mean():.3f}", flush=True)
        for name in methods:
            if board and name == "nle":
                continue  # a flow on integer slots without dequantisation is not a density
            if name == MIXTURE and budget > 10_000:
                continue
            method = make_method(name, budget, program, board, bench.theta_ref, ensemble, partners)
            label = f"{name}+chains{latent_steps}" if chains and name in ("scandal", "score_npe", *AVERAGED) else name
            seeds = c2st_seeds if c2st_too and name in ("npe", "score_npe") else 1
            for seed in range(seeds):  # seed 0: training key 3 and draws key 12, as with one seed
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if name == MIXTURE:  # the same simulations as `pairs` (the same key), at partners θ0 each
                        data = method.simulations(program, budget, key=jax.random.key(budget), progress=False)
                    else:
                        averaged = averaged_pairs.get(AVERAGED.get(name), next(iter(averaged_pairs.values()), None))
                        data = (averaged if chains and name in AVERAGED else pairs) if name in RATIO else plain
                    net, history = method.fit(data, program.prior, key=jax.random.key(3 + 100 * seed), progress=False)
                seconds = time.perf_counter() - start
                mse = bench.error(log_ratio_of(name, method, net, program.prior, board and name == "scandal"))
                score = None
                if c2st_too and name in ("npe", "score_npe"):
                    post = method.posterior(net, program.prior, [history]).condition(x_o)
                    score = float(c2st(reference, np.asarray(post.sample(2000, key=jax.random.key(12 + seed)))))
                extra = f", C2ST {score:.3f}" if score is not None else ""
                seed_note = f" seed {seed}" if seeds > 1 else ""
                print(f"{bench.name:13s} {label:9s} {budget:7d}{seed_note}: log-ratio MSE {mse:9.4f} ({mse / bench.variance:.4f} of Var log r)"
                      f"{extra}  ({seconds:.0f} s, {history['epochs']} epochs)", flush=True)
                report("gold", f"{bench.name} {label} {budget}" + (f" seed {seed}" if seeds > 1 else ""), mse=mse, c2st=score, galton_s=seconds)


def _relative(estimate, exact):
    """|ΔI_ij| / √(I_ii I_jj): the diagonal's relative error, and off the diagonal the error
    on the scale of the entry's largest possible value (an exact zero has no relative error)."""
    scale = np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
    return np.abs(estimate - exact) / scale


def fisher(seeds: int, n_sims: int = 20_000):
    task = galton.tasks.get("state_space")
    theta = np.asarray(task.true_parameters(1))
    exact_joint, exact_x = ss.fisher_information(theta, joint=True), ss.fisher_information(theta)
    errors = {"truth": [], "sally": [], "chains": []}
    for seed in range(seeds):
        truth = galton.fisher_information(task.problem, theta, key=jax.random.key(10 * seed), n=20_000)
        sims = galton.simulate(task.problem, key=jax.random.key(10 * seed + 1), theta=np.tile(theta, (n_sims, 1)), augment="score", progress=False)
        start = time.perf_counter()
        regressor = summaries.fit(sims, loss="sally", key=jax.random.key(10 * seed + 2), progress=False,
                                  embedding=nets.MLP(20, 64, width=128, depth=2, activation="tanh", key=jax.random.key(10 * seed + 3)),
                                  # σ_v's joint score is mostly noise (information 160 against 21 in x): small
                                  # steps on large batches, or the regressor stops before it has E[t | x]
                                  training=Training(learning_rate=3e-4, batch_size=512, patience=50, max_epochs=1000))
        sally = galton.fisher_information(task.problem, theta, key=jax.random.key(10 * seed + 4), n=20_000, method="sally", estimator=regressor)
        sally_s = time.perf_counter() - start
        start = time.perf_counter()
        chains = galton.fisher_information(task.problem, theta, key=jax.random.key(10 * seed + 5), n=5_000, method="chains")
        errors["truth"].append(_relative(truth, exact_joint))
        errors["sally"].append(_relative(sally, exact_x))
        errors["chains"].append(_relative(chains, exact_x))
        print(f"seed {seed}: truth max rel. error {errors['truth'][-1].max():.3f}, sally {errors['sally'][-1].max():.3f} "
              f"(trained in {sally_s:.0f} s), chains {errors['chains'][-1].max():.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    for label, exact in (("truth", exact_joint), ("sally", exact_x), ("chains", exact_x)):
        mean = np.mean(errors[label], axis=0)
        print(f"{label}: exact {np.round(exact, 2).tolist()}\n  relative error per entry, mean over {seeds} seeds: {np.round(mean, 3).tolist()}")
        report("gold", f"fisher {label}", max_rel_error=float(mean.max()), diag_rel_error=float(np.diag(mean).max()), seeds=seeds)


def coverage(toys: int, budget: int, only=None, methods=("wilks", "neyman"), calibration_toys=None, seeds=(23,)):
    """Wilks and Neyman sets from a trained estimator: how often they cover the true θ over ``toys``
    experiments (Neyman: critical values from as many other toys at θ)."""
    cases = [
        ("galton_board", "alices", galton.tasks.get("galton_board"), np.array([0.3], np.float32), 20, 201),
        ("state_space", "scandal", galton.tasks.get("state_space"), np.asarray(ss.TRUE_THETA, np.float32), 10, 15),
    ]
    for name, method_name, task, theta_true, n_events, points in cases:
        if only and name not in only:
            continue
        program = task.problem
        board = name == "galton_board"
        method = make_method(method_name, budget, program, board, np.zeros(program.prior.dim, np.float32) if board else StateSpace.centre())
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if method_name in RATIO:
                sims = gold.pair_simulations(program, budget, key=jax.random.key(21), theta_ref=method.theta_ref, progress=False)
            else:
                sims = galton.simulate(program, budget, key=jax.random.key(21), augment="score", progress=False)
            net, history = method.fit(sims, program.prior, key=jax.random.key(22), progress=False)
        posterior = method.posterior(net, program.prior, [history])
        loglik = galton.lrt.log_likelihood(posterior)
        theta_grid = galton.lrt.grid(program.prior, points)
        for seed in seeds:
            for construction in methods:
                results = galton.lrt.coverage(loglik, program, theta_true, n_events=n_events, theta_grid=theta_grid, key=jax.random.key(seed),
                                              toys=toys, method=construction, calibration_toys=calibration_toys)
                seconds = time.perf_counter() - start
                for r in results:
                    print(f"{name:13s} {method_name} ({budget} simulations), {n_events} events per toy, toys key {seed}, {construction}: {r}, "
                          f"{r.pulls:+.1f} binomial σ from nominal ({seconds:.0f} s)", flush=True)
                    report("gold", f"coverage {name} {construction} {r.level:.2f} key {seed}", covered=r.covered, stderr=r.stderr,
                           pulls=float(r.pulls), toys=r.toys)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=["galton_board", "state_space"])
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 3000, 10_000, 30_000, 100_000])
    parser.add_argument("--methods", nargs="+", default=[*RATIO, MIXTURE, "scandal", "nle", "npe", "score_npe"])
    parser.add_argument("--partners", type=int, default=32, help="rows per simulation of ALICES+ (galton.methods.gold.mixture)")
    parser.add_argument("--fisher-seeds", type=int, default=5)
    parser.add_argument("--skip-fisher", action="store_true")
    parser.add_argument("--ensemble", type=int, default=1, help="the ratio family trains this many networks each and averages them")
    parser.add_argument("--fisher-sims", type=int, default=100_000, help="simulations at θ that train SALLY's regressor")
    parser.add_argument("--skip-c2st", action="store_true")
    parser.add_argument("--c2st-seeds", type=int, default=1,
                        help="NPE and score-augmented NPE are trained with this many training keys each (3 + 100 s, draws key 12 + s)")
    parser.add_argument("--latent-steps", type=int, default=0,
                        help="SCANDAL's and score-augmented NPE's labels averaged over this many NUTS draws of z | x, θ "
                             "(galton.latent_chains; state_space only: the board's latents are discrete)")
    parser.add_argument("--coverage-toys", type=int, default=0, help="run the coverage check with this many toys (500 for the issue)")
    parser.add_argument("--coverage-budget", type=int, default=30_000)
    parser.add_argument("--coverage-calibration-toys", type=int, default=None, help="Neyman's calibration toys (default: --coverage-toys)")
    parser.add_argument("--coverage-seeds", type=int, nargs="+", default=[23, 24, 25],
                        help="keys of the toy sets, one check per key (the estimator's training is fixed)")
    parser.add_argument("--coverage-methods", nargs="+", default=["wilks", "neyman"], choices=["wilks", "neyman"])
    parser.add_argument("--coverage-tasks", nargs="*", default=None, help="only these tasks' coverage check")
    args = parser.parse_args()
    if args.coverage_toys:
        coverage(args.coverage_toys, args.coverage_budget, args.coverage_tasks, args.coverage_methods, args.coverage_calibration_toys,
                 args.coverage_seeds)
    if not args.skip_fisher:
        fisher(args.fisher_seeds, args.fisher_sims)
    for name in args.tasks:
        bench = Board() if name == "galton_board" else StateSpace()
        ratio_errors(bench, args.methods, args.budgets, not args.skip_c2st, args.ensemble, args.partners, args.latent_steps,
                     args.c2st_seeds)


if __name__ == "__main__":
    main()
