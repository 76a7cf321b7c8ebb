"""MUSE for hierarchical programs: `muse(problem, x_obs, key=...)` -> `MuseResult`.

`core` holds the algorithm and the result, `models` the two problem forms (a NumPyro
`Program` and a plain-JAX `HierarchicalModel`), `solvers` the batched L-BFGS and CG.
"""

from galton.muse.core import MuseError, MuseResult, muse
from galton.muse.models import HierarchicalModel

__all__ = ["muse", "MuseResult", "MuseError", "HierarchicalModel"]
