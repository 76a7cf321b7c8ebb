"""What every neural method shares: `fit` = build (or continue) a network, then `train` it."""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np

from galton.problem import Prior
from galton.store import Simulations
from galton.train import train


class NeuralMethod:
    """Mixin for method settings objects; a method defines `network`, `loss`, and maybe `arrays`.

    - ``network(theta, x, key) -> eqx.Module``: an untrained network sized and z-scored for the data.
    - ``loss(prior, sequential) -> (model, batch, key) -> scalar`` with ``batch = (θ, x)``.
    """

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
        key_init, key_train = jax.random.split(key)
        theta, x = self.arrays(sims)
        model = init if init is not None else self.network(theta, x, key_init)
        loss = self.loss(prior, sequential)
        return train(model, loss, (theta, x), key=key_train, settings=self.training, names=["theta", "x"], progress=progress)
