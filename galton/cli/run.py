"""``galton run TASK --method M``: infer a task's posterior end to end, check it against the
reference, write samples (NetCDF), plots and a summary; ``galton demo`` is one such run."""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from pathlib import Path

import jax


def add_commands(subparsers) -> None:
    from galton import methods

    run = subparsers.add_parser("run", help="infer a task's posterior end to end and check it against the reference")
    run.add_argument("task", help="task name (see `galton tasks`)")
    run.add_argument("--method", choices=methods.names(), default="npe")
    run.add_argument("--budget", type=int, default=10_000, help="total simulations")
    run.add_argument("--rounds", type=int, default=1, help="more than 1 for sequential inference")
    run.add_argument("--observation", type=int, default=1, help="which of the task's observations (1..10)")
    run.add_argument("--samples", type=int, default=10_000, help="posterior samples to draw")
    run.add_argument("--max-epochs", type=int, help="cap on training epochs (default: the method's own)")
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="settings",
                     help="a setting of the method, e.g. --set truncation=correlated --set epsilon=1e-4 (repeatable; "
                          "VALUE is read as a Python literal, else kept as text)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", default="runs/latest", help="directory for samples, plots and summary")
    run.set_defaults(handler=run_inference)

    demo = subparsers.add_parser("demo", help="a small inference end to end (what ./dev demo runs)")
    demo.add_argument("--out", default="runs/demo")
    demo.set_defaults(handler=run_demo)


def _cap_epochs(settings, max_epochs: int):
    """``settings`` with every `Training` in it (SALLY's two, a nested method's) capped at ``max_epochs``."""
    import equinox as eqx

    from galton.train import Training

    if isinstance(settings, Training):
        return dataclasses.replace(settings, max_epochs=max_epochs)
    if not dataclasses.is_dataclass(settings) or isinstance(settings, eqx.Module):  # (networks are dataclasses too)
        return settings
    changes = {f.name: _cap_epochs(getattr(settings, f.name), max_epochs) for f in dataclasses.fields(settings) if f.init}
    return dataclasses.replace(settings, **changes)


def _settings(pairs: list[str]) -> dict:
    """``["epsilon=1e-4", "truncation=correlated"]`` -> ``{"epsilon": 1e-4, "truncation": "correlated"}``."""
    import ast

    settings = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--set takes NAME=VALUE, got {pair!r}")
        try:
            settings[name.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            settings[name.strip()] = text
    return settings


def output_directory(path: str, option: str = "--out") -> Path:
    """``path`` created (or found) and writable, checked before any simulation so that a bad
    path fails at once instead of after the fit, sampling and C2ST."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{option} {path} cannot be made a directory: {err.strerror or err}") from err
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path} is a directory this process cannot write to")
    return out


def _check_types(method: str, settings: dict, defaults) -> None:
    """Refuse ``--set`` values the command line cannot mean: text for a numeric setting, or any literal
    for one whose default is a settings object (``training``), which would otherwise fail only
    after the simulations."""
    import numbers

    for name, value in settings.items():
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default) and not isinstance(value, type(default)):
            raise ValueError(f"--set {name}={value!r}: {method}'s {name} is a {type(default).__name__} settings object, "
                             "which --set cannot build" + ("; --max-epochs caps its epochs" if name == "training" else ""))
        if isinstance(default, numbers.Number) and not isinstance(value, numbers.Number):
            wanted = "True or False" if isinstance(default, bool) else "a number"
            raise ValueError(f"--set {name}={value!r}: {method}'s {name} takes {wanted} (default {default!r})")


def _method(name: str, settings: dict):
    """The method ``name`` with the ``--set`` settings, refused by name before anything is simulated."""
    from galton import methods

    defaults = methods.get(name)
    known = {f.name for f in dataclasses.fields(type(defaults)) if f.init}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"{name} has no setting {', '.join(unknown)}; its settings are {', '.join(sorted(known))}")
    _check_types(name, settings, defaults)
    try:
        return methods.get(name, **settings)
    except TypeError as err:  # a check comparing a value of the wrong kind; ValueErrors pass as they are
        given = ", ".join(f"{k}={v!r}" for k, v in settings.items())
        raise ValueError(f"{name} refused the settings {given}: {err}") from err


def run_inference(args) -> int:
    import json

    import numpy as np

    from galton import plot, tasks
    from galton.diagnostics import c2st
    from galton.infer import infer
    from galton.posteriors import samples_to_arviz

    task = tasks.get(args.task)
    x_obs, truth = task.observation(args.observation), task.true_parameters(args.observation)
    key_fit, key_sample, key_ref = jax.random.split(jax.random.key(args.seed), 3)
    method = _method(args.method, _settings(args.settings))
    if args.max_epochs is not None:
        method = _cap_epochs(method, args.max_epochs)
    out = output_directory(args.out)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:  # printed as notes below, and kept in summary.json
        warnings.simplefilter("always")
        posterior = infer(task.problem, x_obs, key=key_fit, method=method, budget=args.budget, rounds=args.rounds)
    fit_seconds = time.perf_counter() - start
    notes = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
    for note in notes:
        print(f"  warning: {note}")
    if getattr(posterior, "marginals", None) is not None:  # TMNRE: marginals, not a joint
        return _write_marginals(args, out, task, posterior, fit_seconds, key_sample, key_ref)
    start = time.perf_counter()
    samples = np.asarray(posterior.sample(args.samples, key=key_sample))
    sample_seconds = time.perf_counter() - start
    summary = {
        "task": args.task, "method": args.method, "budget": args.budget, "rounds": args.rounds,
        "observation": args.observation, "seed": args.seed, "fit_seconds": round(fit_seconds, 2),
        "sample_seconds": round(sample_seconds, 2), "epochs": [h["epochs"] for h in getattr(posterior, "history", None) or []],
        "posterior_mean": dict(zip(task.names, samples.mean(0).tolist())),
        "posterior_std": dict(zip(task.names, samples.std(0).tolist())),
        "true_parameters": dict(zip(task.names, np.asarray(truth).tolist())),
    }
    if notes:
        summary["warnings"] = notes
    info = getattr(posterior, "info", None) or {}
    nuts = info.get("method") == "nuts"
    if info:  # ABC: ε, acceptance, simulations run (and SMC's schedule); NUTS: R-hat, ESS, divergences
        summary["nuts" if nuts else "abc"] = json.loads(json.dumps(info, default=float))
    reference = None
    if task.reference is not None:
        reference = np.asarray(task.reference_posterior(x_obs, args.samples, key=key_ref))
        summary["c2st"] = round(float(c2st(reference, samples)), 4)
    samples_to_arviz(samples, task.names).to_netcdf(out / "samples.nc")
    plot.corner(samples, names=task.names, reference=reference, truth=np.asarray(truth)).savefig(out / "corner.png", dpi=100)
    written = ["samples.nc", "corner.png"]
    if getattr(posterior, "history", None):
        plot.loss_curves(posterior.history[-1]).savefig(out / "loss.png", dpi=100)
        written.append("loss.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if nuts:
        print(f"nuts on {args.task}, observation {args.observation}: {info['num_chains']} chains of {info['num_samples']} draws")
        print(f"  sampled in {fit_seconds:.1f} s; R-hat {max(info['r_hat'].values()):.4f} (worst), bulk ESS "
              f"{min(info['ess_bulk'].values()):.0f} (least), {info['divergences']} divergences")
    else:
        print(f"{args.method} on {args.task}, observation {args.observation}, {args.budget} simulations in {args.rounds} round(s)")
        print(f"  fit {fit_seconds:.1f} s, {args.samples} samples in {sample_seconds:.1f} s")
    if info and not nuts:
        print(f"  ABC: {info['simulations']} simulations, epsilon {info['epsilon']:.4g}" + (f", {len(info['generations']) - 1} generations" if "generations" in info else ""))
    for name in task.names:
        print(f"  {name:>10s} = {summary['posterior_mean'][name]: .3f} ± {summary['posterior_std'][name]:.3f}   (true {summary['true_parameters'][name]: .3f})")
    if "c2st" in summary:
        print(f"  C2ST against the reference posterior: {summary['c2st']:.3f}  (0.5 = indistinguishable)")
    print(f"  wrote {out}/{', '.join(written)}, summary.json")
    return 0


def _write_marginals(args, out: Path, task, posterior, fit_seconds, key_sample, key_ref) -> int:
    """TMNRE's outputs: every marginal's samples (marginals.npz, and each parameter's in samples.nc),
    the corner plot from the estimators, the truncation history and marginal C2ST."""
    import json

    import numpy as np

    from galton import plot
    from galton.diagnostics import c2st

    x_obs, truth = task.observation(args.observation), np.asarray(task.true_parameters(args.observation))
    start = time.perf_counter()
    draws = posterior.marginal_samples(args.samples, key=key_sample)
    sample_seconds = time.perf_counter() - start
    reference = None if task.reference is None else np.asarray(task.reference_posterior(x_obs, args.samples, key=key_ref))
    scores = {}
    if reference is not None:
        for m, values in draws.items():
            scores[",".join(m)] = round(float(c2st(reference[:, [task.names.index(n) for n in m]], values)), 4)
    one_d = {m[0]: v[:, 0] for m, v in draws.items() if len(m) == 1}
    summary = {
        "task": args.task, "method": args.method, "budget": args.budget, "rounds": args.rounds,
        "observation": args.observation, "seed": args.seed, "fit_seconds": round(fit_seconds, 2),
        "sample_seconds": round(sample_seconds, 2), "epochs": [h["epochs"] for h in posterior.history],
        "posterior_mean": {n: float(v.mean()) for n, v in one_d.items()},
        "posterior_std": {n: float(v.std()) for n, v in one_d.items()},
        "true_parameters": dict(zip(task.names, truth.tolist())),
        "truncation": [{k: r[k] for k in ("round", "new", "reused", "pooled", "volume", "box", "region_share_of_box") if k in r} for r in posterior.rounds],
        "marginal_c2st": scores,
    }
    np.savez(out / "marginals.npz", **{",".join(m): v for m, v in draws.items()})
    posterior.to_arviz(n=args.samples, key=key_sample).to_netcdf(out / "samples.nc")
    plot.marginals(posterior, reference=reference, truth=truth).savefig(out / "corner.png", dpi=100)
    plot.truncation(posterior).savefig(out / "truncation.png", dpi=100)
    plot.loss_curves(posterior.history[-1]).savefig(out / "loss.png", dpi=100)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{args.method} on {args.task}, observation {args.observation}, {args.budget} simulations in {args.rounds} round(s)")
    print(f"  fit {fit_seconds:.1f} s, {args.samples} samples of each of {len(draws)} marginals in {sample_seconds:.1f} s")
    print("  prior mass kept per round: " + ", ".join(f"{r['volume']:.3g}" for r in posterior.rounds))
    if "note" in posterior.rounds[0]:
        print(f"  note: {posterior.rounds[0]['note']}")
    for name in task.names:
        print(f"  {name:>10s} = {summary['posterior_mean'][name]: .3f} ± {summary['posterior_std'][name]:.3f}   (true {summary['true_parameters'][name]: .3f})")
    if scores:
        for k in (1, 2):
            values = [v for m, v in scores.items() if len(m.split(",")) == k]
            if values:
                print(f"  mean C2ST of the {len(values)} {k}-D marginals against the reference: {np.mean(values):.3f}")
    print(f"  wrote {out}/marginals.npz, samples.nc, corner.png, truncation.png, loss.png, summary.json")
    return 0


def run_demo(args) -> int:
    print("galton demo: neural posterior estimation on two_moons (sbibm), observation 1, 5,000 simulations")
    from galton.cli import build_parser  # the demo is `galton run` with its own defaults, parsed the same way

    return run_inference(build_parser().parse_args(["run", "two_moons", "--budget", "5000", "--out", args.out]))
