"""MUSE for hierarchical programs: `muse(problem, x_obs, key=...)` -> `MuseResult`.

`estimate` holds the algorithm (`muse`), stepping θ with `root` over the rows of `batch`,
solved by the compiled `kernels` (their random numbers drawn once, `noise`), and ends with
`covariance`; `result` is what it returns. `models` holds the two problem forms (a NumPyro
`Program` and a plain-JAX `HierarchicalModel`), `solvers` the batched L-BFGS and CG.
"""

from galton.muse.estimate import muse
from galton.muse.models import HierarchicalModel
from galton.muse.result import MuseError, MuseResult

__all__ = ["muse", "MuseResult", "MuseError", "HierarchicalModel"]
