"""Random keys at the boundary: every public function that draws calls `as_key` once.

NumPyro users hand us legacy ``jax.random.PRNGKey(0)`` keys (``uint32 (2,)`` arrays), JAX's
newer code ``jax.random.key(0)`` (typed keys); flowjax and the rest of galton want typed keys.
Converting once, where a key enters, keeps the inside of the library on one kind.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def as_key(key, name: str = "key") -> jax.Array:
    """A typed ``jax.random`` key (shape ``()``) from a typed key or a legacy ``PRNGKey``.

    Args:
        key: ``jax.random.key(seed)`` or ``jax.random.PRNGKey(seed)`` (a ``uint32`` array of
            shape ``(2,)``, JAX or NumPy).
        name: the argument's name, for the error message.

    Raises:
        TypeError: ``key`` is neither (an int seed, a float array, a batch of keys).
    """
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise TypeError(f"{name} must be a single jax.random key, got a batch of keys of shape {key.shape}")
        return key
    if isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(jnp.asarray(key))
    what = f"{type(key).__name__} {getattr(key, 'dtype', '')} of shape {np.shape(key)}".replace("  ", " ")
    if isinstance(key, int):
        what = f"the int {key}"
    raise TypeError(
        f"{name} must be a jax.random key (jax.random.key(seed) or jax.random.PRNGKey(seed)), got {what}"
    )


__all__ = ["as_key"]
