"""sbibm task simulators in NumPy, one θ at a time, for the peer scripts in this folder (re-implemented
from TASKS.md). They draw from NumPy's global RNG, so np.random.seed seeds them.

Tasks: two_moons, gaussian_linear, slcp, slcp_distractors; simulator_fn(task) gives the callable.
"""

import numpy as np


def two_moons(theta):
    a = np.random.uniform(-np.pi / 2, np.pi / 2)
    r = np.random.normal(0.1, 0.01)
    z0 = (theta[0] + theta[1]) / np.sqrt(2.0)
    z1 = (theta[1] - theta[0]) / np.sqrt(2.0)
    return np.array([r * np.cos(a) + 0.25 - abs(z0), r * np.sin(a) + z1])


def gaussian_linear(theta):
    return theta + np.sqrt(0.1) * np.random.standard_normal(theta.shape)


def slcp(theta):
    s1, s2, rho = theta[2] ** 2, theta[3] ** 2, np.tanh(theta[4])
    cov = np.array([[s1**2 + 1e-6, rho * s1 * s2], [rho * s1 * s2, s2**2 + 1e-6]])
    chol = np.linalg.cholesky(cov)
    draws = theta[:2] + np.random.standard_normal((4, 2)) @ chol.T  # 4 iid draws of N(m, Σ)
    return draws.reshape(-1)  # (x1_1, x1_2, x2_1, ..., x4_2)


class _Distractors:
    """sbibm's 20-component Student-t (df 2) mixture over 92 distractors and the output permutation."""

    def __init__(self, n=92, k=20):
        rng = np.random.RandomState(42)  # the same stream as np.random.seed(42), in sbibm's order
        self.means = np.stack([15.0 * rng.normal(size=n) for _ in range(k)])
        chols = []
        for _ in range(k):
            full = rng.normal(size=(n, n))
            chols.append(3.0 * (np.tril(full) + np.diag(np.exp(rng.normal(size=n)))))
        self.chols = np.stack(chols)
        self.permutation = rng.permutation(n + 8)
        self.n = n

    def __call__(self, theta):
        k = np.random.randint(len(self.means))
        c = np.random.chisquare(2.0)
        d = self.means[k] + self.chols[k] @ np.random.standard_normal(self.n) / np.sqrt(c / 2.0)
        v = np.concatenate([slcp(theta), d.astype(np.float32)])
        return v[self.permutation]


SIMULATORS = {"two_moons": two_moons, "gaussian_linear": gaussian_linear, "slcp": slcp}
TASKS = [*SIMULATORS, "slcp_distractors"]


def simulator_fn(task):
    if task == "slcp_distractors":
        return _Distractors()
    return SIMULATORS[task]
