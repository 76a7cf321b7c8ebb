"""MUSE on the noisy funnel with 10,000 latents: galton (batched) against the same algorithm
with one compiled MAP solve per simulation in a Python loop, and against NumPyro NUTS; and
(``--dims``) MUSE and NUTS cold, with their peak memory, at up to 10^6 latents.

muse_inference's own example: θ_true = 0, z ~ N(0, e^{θ/2}), x = z + N(0, 1), data from
``split(PRNGKey(0))``; its exact posterior, by quadrature, is θ = 0.0614 ± 0.0274. Cold
times are the first call in a fresh process with galton's persistent compile cache off
(``GALTON_COMPILE_CACHE=0``): import excluded, compilation included. Warm times are the
best of several calls once compiled; galton and the loop are also timed side by side in
one process, call for call with the same seeds, since this machine's speed drifts by tens of
per cent from minute to minute; that paired time is also split into the MUSE iterations
(simulating and solving the MAPs; the first also waits for the random numbers) and the rest
(H, setup, the result). Gradient evaluations count value-and-gradient calls
of log p(x, z | θ) (summed over simulations for MUSE, leapfrog steps for NUTS) and, for
MUSE, Hessian-vector products separately.

With ``--dims``, the scaling table instead: at each size, MUSE cold and NumPyro NUTS cold, each
alone in a fresh process (GALTON_COMPILE_CACHE=0), with that process's wall time, its peak
resident memory (``ru_maxrss``, and the peak of its RSS sampled every 10 ms during the call, and
the RSS before it: imports and the data), θ̂ ± σ against the exact posterior (`funnel.grid_posterior`,
a grid narrowed to the posterior's mass, in float64) and NUTS's θ mean ± σ; the NUTS/MUSE ratio
of cold times. With both ``--dim`` and ``--dims`` given, the comparison at ``--dim`` runs first.

    python bench/muse.py                 # N = 10,000, nsims = 100 (about 2 minutes)
    python bench/muse.py --dim 1000 --nsims 100 --repeats 5
    python bench/muse.py --dims 10000 100000 1000000     # the scaling table (NUTS at 10^6: long)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

from _report import report

METHODS = ("muse", "muse_loop", "nuts")


def funnel_data(dim):
    import jax

    kz, kx = jax.random.split(jax.random.PRNGKey(0))
    return jax.random.normal(kz, (dim,)) + jax.random.normal(kx, (dim,))


_INPUTS = {}


def run_muse(dim, nsims, vectorize):
    import jax

    from galton.muse import muse
    from galton.tasks import get

    if dim not in _INPUTS:  # the problem and the data, made in the first (cold) call only
        _INPUTS[dim] = get("funnel", dim=dim).problem, funnel_data(dim)
    problem, x = _INPUTS[dim]
    result = muse(problem, x, theta_start=0.0, nsims=nsims, key=jax.random.key(1), vectorize=vectorize, progress=False)
    return {
        "theta": float(result.theta_flat[0]), "sigma": float(result.std[0]), "iterations": result.iterations,
        "grad_evals": result.n_gradient_evaluations, "hvps": result.n_hessian_vector_products,
        "iterations_s": sum(h["time_s"] for h in result.history),  # the MAP solves and θ steps
        "converged": result.converged,
    }


_NUTS = {}


def run_nuts(dim, seed):
    import jax
    import numpy as np
    from numpyro import handlers
    from numpyro.diagnostics import effective_sample_size
    from numpyro.infer import MCMC, NUTS

    from galton.tasks import get

    if dim not in _NUTS:  # one MCMC object, so a second run reuses its compiled sampler
        model = handlers.condition(get("funnel", dim=dim).problem.model, data={"x": funnel_data(dim)})
        _NUTS[dim] = MCMC(NUTS(model), num_warmup=500, num_samples=500, progress_bar=False)
    mcmc = _NUTS[dim]
    # ("~z.z": the draws of the latents are not kept, 4 GB at 10^6 latents; the chain is the same)
    mcmc.warmup(jax.random.key(seed), extra_fields=("num_steps", "~z.z"), collect_warmup=True)
    steps = int(mcmc.get_extra_fields()["num_steps"].sum())
    mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=("num_steps", "~z.z"))
    theta = np.asarray(mcmc.get_samples()["theta"])
    steps += int(mcmc.get_extra_fields()["num_steps"].sum())
    return {
        "theta": float(theta.mean()), "sigma": float(theta.std()), "grad_evals": steps,
        "ess": float(effective_sample_size(theta[None])),
    }


def run(method, dim, nsims, seed=0):
    if method == "nuts":
        return run_nuts(dim, seed)
    return run_muse(dim, nsims, vectorize=(method == "muse"))


def timed(method, dim, nsims, seed=0):
    import jax

    start = time.perf_counter()
    out = run(method, dim, nsims, seed)
    jax.effects_barrier()
    out["time_s"] = time.perf_counter() - start
    return out


def rss_bytes() -> int:
    """This process's resident memory now (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class PeakMemory:
    """The peak of this process's resident memory, sampled every ``interval`` s on a thread
    while the block runs (the compiled calls release the GIL), and the RSS when it began."""

    def __init__(self, interval=0.01):
        self.interval, self.peak, self._done = interval, 0, threading.Event()

    def _sample(self):
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self):
        self.before = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def max_rss_bytes() -> int:
    """Peak resident memory of this process so far (``ru_maxrss``: kB on Linux, bytes on macOS)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def worker(args) -> None:
    """In a fresh process: one cold call, then ``repeats`` warm ones; JSON on stdout. With
    ``repeats`` 0, the cold call only, and the process's memory (bytes)."""
    import numpy as np
    import numpyro.infer  # noqa: F401  (imports are not timed: the cold call compiles and runs)

    import galton.muse  # noqa: F401
    import galton.tasks  # noqa: F401

    with PeakMemory() as memory:
        cold = timed(args.worker, args.dim, args.nsims)
    if args.repeats == 0:
        print(json.dumps({"cold": cold, "rss_before": memory.before, "rss_peak_sampled": memory.peak, "max_rss": max_rss_bytes()}))
        return
    warm = [timed(args.worker, args.dim, args.nsims, seed=i + 1) for i in range(args.repeats)]
    times = [w["time_s"] for w in warm]
    print(json.dumps({"cold": cold, "warm": warm[0], "warm_min_s": min(times), "warm_median_s": float(np.median(times))}))


def paired_worker(args) -> None:
    """Warm galton MUSE and the loop alternated in one process, ``repeats`` pairs, the same seed
    in each pair: this machine's speed drifts by ±30 % within minutes, so a ratio of runs made
    minutes apart in separate processes says less than one of runs made side by side."""
    import numpy as np

    for method in ("muse", "muse_loop"):
        timed(method, args.dim, args.nsims)  # compile
    runs = [(timed("muse", args.dim, args.nsims, seed=i + 1), timed("muse_loop", args.dim, args.nsims, seed=i + 1)) for i in range(args.repeats)]
    (muse_s, loop_s), (muse_it, loop_it) = (np.array([[r[k] for r in pair] for pair in runs]).T for k in ("time_s", "iterations_s"))
    print(json.dumps({
        "muse_min_s": muse_s.min(), "loop_min_s": loop_s.min(), "ratio_median": float(np.median(loop_s / muse_s)),
        "ratio_of_mins": float(loop_s.min() / muse_s.min()),
        # where the time goes: the MUSE iterations (simulating, solving the MAPs; the first
        # also waits for the random numbers drawn at setup), and the rest (H, setup, the result)
        "iterations_s": [float(np.median(muse_it)), float(np.median(loop_it))],
        "rest_s": [float(np.median(muse_s - muse_it)), float(np.median(loop_s - loop_it))],
    }))


def exact(dim):
    """The exact posterior's mean and σ of θ (quadrature in float64 on a grid across its mass)."""
    from galton.tasks.funnel import posterior_moments

    return posterior_moments(funnel_data(dim))


def scaling(args) -> bool:
    """MUSE cold and NUTS cold at each of ``args.dims``, each alone in a fresh process; whether all ran."""
    no_cache = {**os.environ, "GALTON_COMPILE_CACHE": "0"}
    methods = [m for m in ("muse", "nuts") if m in args.methods.split(",")]
    mb = lambda b: b / 2**20
    rows, failed = [], []
    print(f"noisy funnel, θ_true = 0, data from split(PRNGKey(0)); MUSE with nsims = {args.nsims}; each run cold, alone in a fresh process")
    for dim in args.dims:
        mean, sd = exact(dim)
        print(f"N = {dim:,}: exact posterior (quadrature) θ = {mean:.5f} ± {sd:.5f}", flush=True)
        report("muse", f"scaling: exact (quadrature), N={dim}", theta=mean, sigma=sd)
        out = {}
        for method in methods:
            cmd = [sys.executable, __file__, "--worker", method, "--dim", str(dim), "--nsims", str(args.nsims), "--repeats", "0"]
            timeout = args.nuts_timeout if method == "nuts" else None
            start = time.perf_counter()
            try:
                done = subprocess.run(cmd, env=no_cache, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                wall = time.perf_counter() - start
                print(f"  {method}: not done after {wall:.0f} s (--nuts-timeout); its time is a lower bound", flush=True)
                out[method] = {"cold": {"time_s": wall}, "timed_out": True, "wall_s": wall}
                report("muse", f"scaling: {method} cold, N={dim}", timed_out=True, cold_s_at_least=wall)
                continue
            wall = time.perf_counter() - start
            if done.returncode != 0:  # (killed for memory, say): say so, and go on with the other runs
                last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "")
                print(f"  {method}: FAILED after {wall:.0f} s, exit status {done.returncode}: {last}", flush=True)
                report("muse", f"scaling: {method} cold, N={dim}: FAILED", exit_status=done.returncode, stderr=last, process_s=wall)
                failed.append(f"{method} at N={dim}")
                continue
            r = out[method] = {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": wall}
            c = r["cold"]
            line = (f"  {method:4s} cold {c['time_s']:8.2f} s (process {wall:7.2f} s with imports), peak RSS {mb(r['max_rss']):7.0f} MB "
                    f"(sampled {mb(r['rss_peak_sampled']):.0f} MB; {mb(r['rss_before']):.0f} MB before the call), "
                    f"θ = {c['theta']:.5f} ± {c['sigma']:.5f}: ({c['theta'] - mean:+.5f}) = {(c['theta'] - mean) / sd:+.2f} σ, σ ratio {c['sigma'] / sd:.3f}")
            if method == "muse":
                line += f"; {c['iterations']} iterations, {c['grad_evals']} gradient evaluations, {c['hvps']} HVPs, converged {c['converged']}"
            else:
                line += f"; {c['grad_evals']} gradient evaluations, ESS {c['ess']:.0f}"
            print(line, flush=True)
            report("muse", f"scaling: {method} cold, N={dim}" + (f", nsims={args.nsims}" if method == "muse" else ", 500+500"),
                   cold_s=c["time_s"], process_s=wall, max_rss_mb=mb(r["max_rss"]), rss_peak_sampled_mb=mb(r["rss_peak_sampled"]),
                   rss_before_mb=mb(r["rss_before"]), theta=c["theta"], sigma=c["sigma"], shift_sigma=(c["theta"] - mean) / sd,
                   sigma_ratio=c["sigma"] / sd, iterations=c.get("iterations"), grad_evals=c["grad_evals"], hvps=c.get("hvps"), ess=c.get("ess"))
        if len(out) == 2:
            galton_s, peer_s = out["muse"]["cold"]["time_s"], out["nuts"]["cold"]["time_s"]
            bound = "at least " if out["nuts"].get("timed_out") else ""
            print(f"  NUTS cold / MUSE cold: {bound}{peer_s / galton_s:.1f}x", flush=True)
            report("muse", f"scaling: nuts / muse cold, N={dim}", galton_s=galton_s, peer_s=peer_s, ratio=peer_s / galton_s,
                   lower_bound=True if bound else None)
        rows.append((dim, mean, sd, out))
    # the table again, at the end
    print(f"\n{'N':>9s} {'exact θ ± σ':>20s} {'MUSE θ̂ ± σ':>20s} {'σ/σ_ex':>6s} {'MUSE s':>7s} {'MUSE MB':>8s} {'NUTS θ ± σ':>20s} {'NUTS s':>8s} {'NUTS MB':>8s} {'NUTS/MUSE':>9s}")
    for dim, mean, sd, out in rows:
        m, n = out.get("muse"), out.get("nuts")
        cells = [f"{dim:9,d}", f"{mean:9.5f} ± {sd:8.5f}"]
        cells += [f"{m['cold']['theta']:9.5f} ± {m['cold']['sigma']:8.5f}", f"{m['cold']['sigma'] / sd:6.3f}", f"{m['cold']['time_s']:7.2f}", f"{mb(m['max_rss']):8.0f}"] if m else [f"{'':>20s}", f"{'':>6s}", f"{'':>7s}", f"{'':>8s}"]
        if n and not n.get("timed_out"):
            cells += [f"{n['cold']['theta']:9.5f} ± {n['cold']['sigma']:8.5f}", f"{n['cold']['time_s']:8.1f}", f"{mb(n['max_rss']):8.0f}"]
        elif n:
            cells += [f"{'(timed out)':>20s}", f"{'>' + format(n['cold']['time_s'], '.0f'):>8s}", f"{'':>8s}"]
        if m and n:
            cells += [f"{('≥' if n.get('timed_out') else '') + format(n['cold']['time_s'] / m['cold']['time_s'], '.1f') + 'x':>9s}"]
        print(" ".join(cells))
    print(f"(σ from nsims = {args.nsims} simulations carries a sampling error of about {100 / (2 * (args.nsims - 1)) ** 0.5:.0f} % (1/√(2(nsims-1)), J's spread))")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return not failed


def compare(args) -> None:
    """galton MUSE against the loop and NUTS at ``args.dim``: cold and warm, and side by side."""

    def fresh_process(method, env, repeats):
        cmd = [sys.executable, __file__, "--worker", method, "--dim", str(args.dim), "--nsims", str(args.nsims), "--repeats", str(repeats)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        return json.loads(done.stdout.strip().splitlines()[-1])

    no_cache = {**os.environ, "GALTON_COMPILE_CACHE": "0"}
    results = {method: fresh_process(method, no_cache, args.repeats) for method in args.methods.split(",")}
    cached_cold = None
    if "muse" in results:
        # galton's persistent compile cache (on by default): a second fresh process skips compiling
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "GALTON_COMPILE_CACHE": "1", "GALTON_CACHE_DIR": cache}
            fresh_process("muse", env, 1)
            cached_cold = fresh_process("muse", env, 1)["cold"]["time_s"]

    paired = None
    if {"muse", "muse_loop"} <= set(results):
        paired = fresh_process("paired", os.environ.copy(), 2 * args.repeats)

    mean, sd = exact(args.dim)
    print(f"noisy funnel, {args.dim} latents, θ_true = 0, data from split(PRNGKey(0)); MUSE with nsims = {args.nsims}")
    print(f"exact posterior (quadrature): θ = {mean:.4f} ± {sd:.4f}")
    report("muse", f"exact (quadrature), N={args.dim}", theta=mean, sigma=sd)
    labels = {"muse": "galton MUSE (batched)", "muse_loop": "MUSE, solve per sim (loop)", "nuts": "NumPyro NUTS 500+500"}
    print(f"{'method':28s} {'θ̂':>8s} {'σ':>7s} {'(θ̂-m)/sd':>9s} {'σ/sd':>6s} {'warm s':>8s} {'cold s':>7s} {'grad evals':>11s} {'HVPs':>6s}")
    for method, r in results.items():
        w = r["warm"]
        print(
            f"{labels[method]:28s} {w['theta']:8.4f} {w['sigma']:7.4f} {(w['theta'] - mean) / sd:9.3f} {w['sigma'] / sd:6.3f} "
            f"{r['warm_min_s']:8.4f} {r['cold']['time_s']:7.2f} {w['grad_evals']:11d} {w.get('hvps', 0):6d}"
        )
        report("muse", f"{method}, N={args.dim}, nsims={args.nsims}", theta=w["theta"], sigma=w["sigma"],
               warm_s=r["warm_min_s"], cold_s=r["cold"]["time_s"], grad_evals=w["grad_evals"], hvps=w.get("hvps"), iterations=w.get("iterations"), ess=w.get("ess"))
    if "nuts" in results:
        print(f"NUTS effective sample size of θ: {results['nuts']['warm']['ess']:.0f}")
    if "muse" in results:
        base = results["muse"]
        for other in ("muse_loop", "nuts"):
            if other in results:
                print(
                    f"{labels[other]} / galton MUSE: warm {results[other]['warm_min_s'] / base['warm_min_s']:.1f}x, "
                    f"cold {results[other]['cold']['time_s'] / base['cold']['time_s']:.1f}x"
                )
                warm, cold = (base["warm_min_s"], results[other]["warm_min_s"]), (base["cold"]["time_s"], results[other]["cold"]["time_s"])
                for when, (galton_s, peer_s) in (("warm", warm), ("cold", cold)):
                    report("muse", f"{other} / muse {when}, N={args.dim}", galton_s=galton_s, peer_s=peer_s, ratio=peer_s / galton_s)
        if paired is not None:
            print(
                f"side by side in one process ({2 * args.repeats} pairs, same seeds): galton {paired['muse_min_s']:.4f} s, "
                f"loop {paired['loop_min_s']:.4f} s (best of each): {paired['ratio_of_mins']:.1f}x; "
                f"median of the pairs' ratios {paired['ratio_median']:.1f}x"
            )
            report("muse", f"muse_loop / muse side by side, N={args.dim}", galton_s=paired["muse_min_s"], peer_s=paired["loop_min_s"],
                   ratio=paired["ratio_of_mins"], ratio_median=paired["ratio_median"])
            (g_it, l_it), (g_rest, l_rest) = paired["iterations_s"], paired["rest_s"]
            print(
                f"  of which (medians) the MUSE iterations (the first waits for the random numbers): galton {g_it:.4f} s, loop {l_it:.4f} s, {l_it / g_it:.1f}x; "
                f"the rest (H, setup, result): galton {g_rest:.4f} s, loop {l_rest:.4f} s, {l_rest / g_rest:.1f}x"
            )
            report("muse", f"muse_loop / muse side by side, MUSE iterations, N={args.dim}", galton_s=g_it, peer_s=l_it, ratio=l_it / g_it)
            report("muse", f"muse_loop / muse side by side, the rest, N={args.dim}", galton_s=g_rest, peer_s=l_rest, ratio=l_rest / g_rest)
        print(f"galton MUSE warm median {base['warm_median_s']:.4f} s over {args.repeats} calls; {base['warm']['iterations']} iterations")
        print(f"galton MUSE cold in a fresh process with its compile cache filled by an earlier one: {cached_cold:.2f} s")
        report("muse", f"muse cold, compile cache filled, N={args.dim}", cold_s=cached_cold)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, help="the comparison's size (default 10,000; with --dims, none unless given)")
    parser.add_argument("--dims", type=int, nargs="+", help="the scaling table: MUSE and NUTS cold at each size")
    parser.add_argument("--nuts-timeout", type=float, help="seconds a NUTS run of the scaling table may take (its time is then a lower bound)")
    parser.add_argument("--nsims", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5, help="warm calls per method (NUTS: 2)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--worker", choices=METHODS + ("paired",), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "paired":
        paired_worker(args)
        return 0
    if args.worker:
        if args.worker == "nuts":
            args.repeats = min(args.repeats, 2)
        worker(args)
        return 0
    if args.dims and args.dim is None:
        return 0 if scaling(args) else 1
    args.dim = 10_000 if args.dim is None else args.dim
    compare(args)
    if args.dims:
        print()
        return 0 if scaling(args) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
