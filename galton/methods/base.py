"""The method registry, and what every neural method shares: `fit` = build (or continue) a
network, then `train` it.

A method is a frozen settings object registered under a name with `register`; `galton.infer`,
the ``galton run`` command and ``galton.__init__`` all read `REGISTRY`, so a new family
(``tmnre``, ``rejection_abc``, ``rascal``, ``nuts``, ...) becomes reachable everywhere by
decorating its class.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import equinox as eqx
import jax
import numpy as np

from galton.checks import check_count
from galton.flows import FLOWS
from galton.prior import Prior
from galton.sampling import check_sampler
from galton.store import Simulations
from galton.train import Training, train

REGISTRY: dict[str, type] = {}


def register(name: str):
    """Class decorator: make a method reachable as ``method=name`` in `galton.infer` and the CLI."""

    def decorate(cls):
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} is taken by {REGISTRY[name].__name__}")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return decorate


def bind(fn, **settings):
    """``fn`` with ``settings`` bound, as a `jax.tree_util.Partial`: `train` compiles one epoch for
    equal non-array settings, and array settings (statistics of the data, such as score weights)
    are inputs of that program rather than constants baked into it."""
    return jax.tree_util.Partial(fn, **settings)


def names() -> list[str]:
    """The registered method names, sorted."""
    return sorted(REGISTRY)


def get(method, **options):
    """A method object from its name and settings (``get("nre", variant="c")``), or as given."""
    if isinstance(method, str):
        if method.lower() not in REGISTRY:
            raise ValueError(f"method must be one of {names()} or a method object, got {method!r}")
        cls = REGISTRY[method.lower()]
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(options) - known)
        if unknown:  # before the class's own TypeError, which names neither the method's settings nor the fix
            raise ValueError(f"{method.lower()} has no setting {', '.join(unknown)}; its settings are {', '.join(sorted(known))}")
        return cls(**options)
    if options:
        raise ValueError("options go with a method name; a method object carries its own settings")
    if not isinstance(method, tuple(REGISTRY.values())):
        raise ValueError(f"method must be one of {names()} or a method object, got {type(method).__name__}")
    return method


def fit_keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The keys `NeuralMethod.fit` builds its network with and trains with, from its ``key``."""
    return tuple(jax.random.split(key))


def require_program(problem, method: str, rounds: int, needs: str = "the joint density") -> None:
    """Raise unless ``problem`` is a `Program` and ``rounds`` is 1: the methods that use a
    program's joint density (gold mining, NUTS, inference compilation) are one-shot."""
    from galton.problem import ProblemError, Program
    from galton.randomness import check_density

    if not isinstance(problem, Program):
        raise ProblemError(f"method {method!r} uses {needs} of a Program; {problem.name} is a black-box Simulator")
    if rounds != 1:
        raise ValueError(f"method {method!r} runs in one round: rounds must be 1, got {rounds}")
    check_density(problem, f"method {method!r}")


# what a neural method's rounds do with simulations whose x has NaN or inf (`galton.simulate`)
ON_INVALID = ("raise", "drop")


def check_training(training, name: str = "training") -> None:
    """Raise ValueError unless ``training`` is a `Training`; a dict is refused with the call that builds one."""
    if isinstance(training, Training):
        return
    if isinstance(training, dict):
        given = ", ".join(f"{k}={v!r}" for k, v in training.items())
        raise ValueError(f"{name} must be a galton.Training, not a dict: write {name}=galton.Training({given})")
    raise ValueError(f"{name} must be a galton.Training, e.g. {name}=galton.Training(max_epochs=200), got {type(training).__name__}")


class NeuralMethod:
    """Mixin for method settings objects; a method defines `network`, `loss`, `posterior`, and
    maybe `arrays`.

    - ``network(theta, x, key) -> eqx.Module``: an untrained network sized and z-scored for the data.
    - ``loss(prior, sequential) -> (model, batch, key) -> scalar`` with ``batch = (θ, x)``.
    - ``posterior(network, prior, history) -> Posterior``: the trained network as a posterior.

    Attributes:
        iid: whether the posterior takes a set of iid observations ``(n_obs, *x_shape)``.
    """

    name: ClassVar[str] = ""
    iid: ClassVar[bool] = True

    def _check_settings(self, **minimums: int) -> None:
        """Raise ValueError naming the first bad setting: each count in ``minimums`` (name -> least
        value), and ``flow``, ``embedding``, ``training``, ``on_invalid`` and ``sampler`` where the
        method has them; a ``sampler`` dict becomes ``((name, value), ...)``. Methods call it from
        ``__post_init__``, so a bad setting fails before a simulation is run."""
        for name, minimum in minimums.items():
            check_count(getattr(self, name), name, minimum=minimum)
        if hasattr(self, "flow") and self.flow not in FLOWS:
            raise ValueError(f"flow must be one of {FLOWS}, got {self.flow!r}")
        if getattr(self, "embedding", None) is not None and not isinstance(self.embedding, eqx.Module):
            raise ValueError(f"embedding must be a galton.nets module (e.g. galton.nets.MLP) or None, got {type(self.embedding).__name__}")
        check_training(self.training)
        if getattr(self, "on_invalid", "raise") not in ON_INVALID:
            raise ValueError(f"on_invalid must be one of {ON_INVALID}, got {self.on_invalid!r}"
                             + ("; kept NaN or inf simulations cannot be trained on" if self.on_invalid == "keep" else ""))
        if hasattr(self, "sampler"):
            object.__setattr__(self, "sampler", check_sampler(self.sampler))  # the settings object is frozen

    def arrays(self, sims: Simulations) -> tuple[np.ndarray, np.ndarray]:
        """The (θ, x) arrays the network trains on."""
        return sims.theta, sims.x

    def fit(
        self,
        sims: Simulations,
        prior: Prior,
        *,
        key: jax.Array,
        sequential: bool = False,
        init: eqx.Module | None = None,
        progress: bool = True,
    ) -> tuple[eqx.Module, dict]:
        """Train the method's network on ``sims`` (θ ``(n, d)``, x ``(n, ...)``).

        Args:
            prior: the problem's `Prior` (losses that correct for proposals need it).
            sequential: θ came (partly) from proposals other than the prior: NPE then uses
                its atomic loss; NLE and NRE need no correction.
            init: a trained network to continue training (its z-scoring is kept).

        Returns:
            The trained network and its training history.
        """
        key_init, key_train = fit_keys(key)
        theta, x = self.arrays(sims)
        model = init if init is not None else self.network(theta, x, key_init)
        loss = self.loss(prior, sequential)
        return train(model, loss, (theta, x), key=key_train, settings=self.training, names=["theta", "x"], progress=progress)
