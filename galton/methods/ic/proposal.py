"""The inference-compilation proposal q(u_θ, u_c, z_d | x) = q(u_θ | x) · q(u_c | u_θ, x) ·
q(z_d | u_θ, u_c, x) (see `galton.methods.ic`), its pieces and its loss."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import paramax
from flowjax.bijections import AbstractBijection, Chain
from flowjax.distributions import Normal, Transformed

from galton import nets
from galton.flows import input_standardisation, make_flow, standardisation
from galton.methods.ic.layout import Layout


def proposal_loss(proposal: Proposal, batch, key) -> jax.Array:
    """−mean log q(u_θ, u_c, z_d | x) over a batch of joint simulations."""
    u_theta, u_latent, z_discrete, x = batch
    return -proposal.log_prob(u_theta, u_latent, z_discrete, x).mean()




class ConditionalAffine(AbstractBijection):
    """y = loc(c) + exp(log_scale(c)) ⊙ x elementwise on ``(dim,)`` given a condition c ``(cond_dim,)``.

    ``loc = b(c) + a(c) ⊙ (L c)`` and ``log_scale`` come from one MLP (b, a, log_scale) and one
    linear map L: a latent that is a context-dependent multiple of the data (a funnel's z_i given
    θ and x_i) is then one product away, not a function a narrow MLP must approximate. The MLP's
    hidden units are tanh, so that a, b and the scale stay bounded on contexts far from the
    training data (with ReLU the product a ⊙ L c grew quadratically there, and on 5,000 funnel
    simulations the validation loss rose from 25 to 400); its last layer starts at zero, so the
    map starts as the identity.
    """

    shape: tuple[int, ...]
    cond_shape: tuple[int, ...]
    network: eqx.nn.MLP
    linear: eqx.nn.Linear

    def __init__(self, dim: int, cond_dim: int, *, width: int, key: jax.Array):
        key_net, key_linear = jax.random.split(key)
        network = eqx.nn.MLP(cond_dim, 3 * dim, width, 2, activation=jnp.tanh, key=key_net)
        last = network.layers[-1]
        self.network = eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), network,
                                   (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))
        self.linear = eqx.nn.Linear(cond_dim, dim, key=key_linear)
        self.shape, self.cond_shape = (dim,), (cond_dim,)

    def _loc_and_log_scale(self, condition):
        b, a, log_scale = jnp.split(self.network(condition), 3)
        return b + a * self.linear(condition), jnp.clip(log_scale, -12.0, 12.0)

    def transform_and_log_det(self, x, condition=None):
        loc, log_scale = self._loc_and_log_scale(condition)
        return loc + jnp.exp(log_scale) * x, log_scale.sum()

    def inverse_and_log_det(self, y, condition=None):
        loc, log_scale = self._loc_and_log_scale(condition)
        return (y - loc) * jnp.exp(-log_scale), -log_scale.sum()


class CategoricalHead(eqx.Module):
    """q(z | c) over ``dim`` discrete elements, element j taking ``categories[j]`` values
    ``low[j] + 0 .. low[j] + categories[j] − 1``, given a context c ``(cond_dim,)``.

    logits_j = MLP(c)_j (mean field) + MADE(one-hot z_<j, c)_j (``autoregressive``): a masked
    hidden layer whose unit of degree m sees the elements before m+1 and all of c (Germain et
    al. 2015). Mean field alone is exact when the elements are independent given the context
    (a mixture's assignments given θ and x); the autoregressive part captures paths whose
    elements depend on each other (a Galton board's deflections, constrained by the final slot).
    """

    mean_field: eqx.nn.MLP
    made_in: jax.Array | None  # (width, dim·K) masked weights on the one-hot z
    made_context: eqx.nn.Linear | None  # c -> (width,)
    made_out: jax.Array | None  # (dim·K, width) masked weights to the logits
    mask_in: jax.Array | None
    mask_out: jax.Array | None
    valid: jax.Array  # (dim, K) which categories each element has
    low: paramax.NonTrainable  # (dim,)
    dim: int = eqx.field(static=True)
    size: int = eqx.field(static=True)  # K: the most values of any element

    def __init__(self, low: np.ndarray, categories: np.ndarray, cond_dim: int, *, hidden: int, autoregressive: bool, key: jax.Array):
        self.dim, self.size = len(low), int(np.max(categories))
        self.low = paramax.NonTrainable(jnp.asarray(low, jnp.float32))
        self.valid = jnp.asarray(np.arange(self.size)[None] < np.asarray(categories)[:, None])
        key_mf, key_in, key_context, key_out = jax.random.split(key, 4)
        self.mean_field = eqx.nn.MLP(cond_dim, self.dim * self.size, hidden, 2, activation=jax.nn.relu, key=key_mf)
        self.made_in = self.made_context = self.made_out = self.mask_in = self.mask_out = None
        if autoregressive and self.dim > 1:
            width = max(hidden, 2 * self.dim)
            degree_in = np.repeat(np.arange(1, self.dim + 1), self.size)  # element j (0-based) has degree j + 1
            degree_hidden = 1 + np.arange(width) % (self.dim - 1)
            self.mask_in = jnp.asarray(degree_in[None] <= degree_hidden[:, None])
            self.mask_out = jnp.asarray(degree_hidden[None] < degree_in[:, None])
            self.made_in = jax.random.normal(key_in, (width, self.dim * self.size)) / np.sqrt(self.dim)
            self.made_context = eqx.nn.Linear(cond_dim, width, key=key_context)
            self.made_out = jnp.zeros((self.dim * self.size, width))

    def logits(self, index: jax.Array, condition: jax.Array) -> jax.Array:
        """Log-probabilities ``(dim, K)`` of each element's categories, given categories ``index``
        ``(dim,)`` (only those before each element are read) and one c ``(cond_dim,)``."""
        logits = self.mean_field(condition)
        if self.made_in is not None:
            one_hot = jax.nn.one_hot(index, self.size).reshape(-1)
            h = jax.nn.relu(jnp.where(self.mask_in, self.made_in, 0.0) @ one_hot + self.made_context(condition))
            logits = logits + jnp.where(self.mask_out, self.made_out, 0.0) @ h
        logits = jnp.where(self.valid, logits.reshape(self.dim, self.size), -1e9)
        return jax.nn.log_softmax(logits, axis=-1)

    def log_prob(self, z: jax.Array, condition: jax.Array) -> jax.Array:
        """log q(z | c) for one z ``(dim,)`` (values, not categories) and c ``(cond_dim,)``: a scalar."""
        index = jnp.round(z - paramax.unwrap(self.low)).astype(jnp.int32)
        log_p = self.logits(index, condition)
        return jnp.take_along_axis(log_p, index[:, None], axis=1).sum()

    def sample(self, key: jax.Array, condition: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One z ``(dim,)`` (values) given c ``(cond_dim,)``, and its log q."""
        keys = jax.random.split(key, self.dim)
        if self.made_in is None:
            log_p = self.logits(jnp.zeros(self.dim, jnp.int32), condition)
            index = jax.vmap(jax.random.categorical)(keys, log_p)
        else:  # element by element: each draw's logits see the elements drawn before it
            def draw(index, j):
                return index.at[j].set(jax.random.categorical(keys[j], self.logits(index, condition)[j])), None

            index = jax.lax.scan(draw, jnp.zeros(self.dim, jnp.int32), jnp.arange(self.dim))[0]
            log_p = self.logits(index, condition)
        log_q = jnp.take_along_axis(log_p, index[:, None], axis=1).sum()
        return paramax.unwrap(self.low) + index.astype(jnp.float32), log_q


def _frozen(values) -> paramax.NonTrainable:
    return paramax.NonTrainable(jnp.asarray(values))


class Proposal(eqx.Module):
    """q(u_θ, u_c, z_d | x) = q(u_θ | x) · q(u_c | u_θ, x) · q(z_d | u_θ, u_c, x), on z-scored
    u_θ ``(d,)``, u_c ``(d_c,)`` and x; the discrete latents z_d ``(d_d,)`` as values.

    Attributes:
        embedding: z-scored x ``(d_x,)`` -> ``(e,)``, shared by the three parts.
        theta_flow: a flowjax flow over z-scored u_θ given e(x).
        latent_flow: a flowjax flow over z-scored u_c given [u_θ, e(x)] (None without continuous latents).
        discrete: a `CategoricalHead` given [u_θ, u_c, e(x)] (None without discrete latents).
    """

    embedding: eqx.Module
    theta_flow: eqx.Module
    latent_flow: eqx.Module | None
    discrete: CategoricalHead | None
    x_shift: paramax.NonTrainable
    x_scale: paramax.NonTrainable
    theta_shift: paramax.NonTrainable
    theta_scale: paramax.NonTrainable
    latent_shift: paramax.NonTrainable
    latent_scale: paramax.NonTrainable

    def _embed(self, x: jax.Array) -> jax.Array:
        x = (x - paramax.unwrap(self.x_shift)) / paramax.unwrap(self.x_scale)
        batch = x.shape[:-1]
        return jax.vmap(self.embedding)(x.reshape(-1, x.shape[-1])).reshape(*batch, -1)

    def log_prob(self, u_theta: jax.Array, u_latent: jax.Array, z_discrete: jax.Array, x: jax.Array) -> jax.Array:
        """log q for a batch: u_θ ``(n, d)``, u_c ``(n, d_c)``, z_d ``(n, d_d)``, x ``(n, d_x)`` -> ``(n,)``."""
        e = self._embed(x)
        theta_scale, latent_scale = paramax.unwrap(self.theta_scale), paramax.unwrap(self.latent_scale)
        t = (u_theta - paramax.unwrap(self.theta_shift)) / theta_scale
        log_q = self.theta_flow.log_prob(t, e) - jnp.log(theta_scale).sum()
        context = jnp.concatenate([t, e], -1)
        if self.latent_flow is not None:
            c = (u_latent - paramax.unwrap(self.latent_shift)) / latent_scale
            log_q = log_q + self.latent_flow.log_prob(c, context) - jnp.log(latent_scale).sum()
            context = jnp.concatenate([t, c, e], -1)
        if self.discrete is not None:
            log_q = log_q + jax.vmap(self.discrete.log_prob)(z_discrete, context)
        return log_q

    def sample(self, key: jax.Array, x: jax.Array, n: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """``n`` draws at one x ``(d_x,)``: u_θ ``(n, d)``, u_c ``(n, d_c)``, z_d ``(n, d_d)`` and log q ``(n,)``."""
        key_theta, key_latent, key_discrete = jax.random.split(key, 3)
        e = jnp.broadcast_to(self._embed(x[None])[0], (n, self.embedding_dim))
        theta_scale, latent_scale = paramax.unwrap(self.theta_scale), paramax.unwrap(self.latent_scale)
        t, log_q = self.theta_flow.sample_and_log_prob(key_theta, (n,), condition=e[0])
        log_q = log_q - jnp.log(theta_scale).sum()
        context = jnp.concatenate([t, e], -1)
        u_latent = jnp.zeros((n, 0))
        if self.latent_flow is not None:
            c, log_q_latent = self.latent_flow.sample_and_log_prob(key_latent, condition=context)
            log_q = log_q + log_q_latent - jnp.log(latent_scale).sum()
            u_latent = c * latent_scale + paramax.unwrap(self.latent_shift)
            context = jnp.concatenate([t, c, e], -1)
        z_discrete = jnp.zeros((n, 0))
        if self.discrete is not None:
            z_discrete, log_q_discrete = jax.vmap(self.discrete.sample)(jax.random.split(key_discrete, n), context)
            log_q = log_q + log_q_discrete
        return t * theta_scale + paramax.unwrap(self.theta_shift), u_latent, z_discrete, log_q

    @property
    def embedding_dim(self) -> int:
        return int(self.theta_flow.cond_shape[0])


def build_proposal(u_theta: np.ndarray, u_latent: np.ndarray, z_discrete: np.ndarray, x: np.ndarray, structure: Layout, *,
                   key: jax.Array, flow: str = "nsf", transforms: int = 5, hidden: int = 64, bins: int = 8,
                   embedding: eqx.Module | None = None, discrete: str = "autoregressive", latent_transforms: int = 0) -> Proposal:
    """An untrained `Proposal` sized and z-scored for joint simulations u_θ ``(n, d)``,
    u_c ``(n, d_c)``, z_d ``(n, d_d)``, x ``(n, d_x)``."""
    key_theta, key_latent, key_affine, key_discrete = jax.random.split(key, 4)
    embedding = nets.Identity(x.shape[1:]) if embedding is None else embedding
    e_dim = int(jax.eval_shape(embedding, jnp.zeros(x.shape[1:])).shape[0])
    d, d_c = u_theta.shape[1], u_latent.shape[1]
    theta_flow = make_flow(flow, d, e_dim, key=key_theta, transforms=transforms, hidden=hidden, bins=bins)
    latent_flow = head = None
    if d_c:
        affine = ConditionalAffine(d_c, d + e_dim, width=max(hidden, d_c), key=key_affine)
        if latent_transforms:
            inner = make_flow(flow, d_c, d + e_dim, key=key_latent, transforms=latent_transforms, hidden=hidden, bins=bins)
            latent_flow = Transformed(inner.base_dist, Chain([inner.bijection, affine]))
        else:
            latent_flow = Transformed(Normal(jnp.zeros(d_c)), affine)
    if z_discrete.shape[1]:
        head = CategoricalHead(structure.low, structure.categories, d + d_c + e_dim, hidden=hidden,
                               autoregressive=discrete == "autoregressive", key=key_discrete)
    x_shift, x_scale = input_standardisation(embedding, x)
    theta_shift, theta_scale = standardisation(u_theta)
    latent_shift, latent_scale = standardisation(u_latent) if d_c else (np.zeros(0, np.float32), np.ones(0, np.float32))
    return Proposal(embedding, theta_flow, latent_flow, head, _frozen(x_shift), _frozen(x_scale), _frozen(theta_shift),
                    _frozen(theta_scale), _frozen(latent_shift), _frozen(latent_scale))


__all__ = ["CategoricalHead", "ConditionalAffine", "Proposal", "build_proposal", "proposal_loss"]
