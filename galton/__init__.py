"""galton: simulation-based inference in JAX."""

from galton._cache import enable_compile_cache

enable_compile_cache()

from galton import tasks  # noqa: E402
from galton.infer import infer
from galton.methods import NLE, NPE, NRE
from galton.muse import HierarchicalModel, MuseError, MuseResult, muse
from galton.posterior import GaussianPosterior, Posterior
from galton.problem import Blocks, Prior, Problem, ProblemError, Program, Simulator, check_theta
from galton.simulate import SimulationError, simulate
from galton.store import Simulations, StoreMismatchError, load_simulations
from galton.train import Training, TrainingError

__all__ = [
    "Blocks",
    "GaussianPosterior",
    "HierarchicalModel",
    "MuseError",
    "MuseResult",
    "Posterior",
    "muse",
    "NLE",
    "NPE",
    "NRE",
    "Prior",
    "Problem",
    "ProblemError",
    "Program",
    "SimulationError",
    "Simulations",
    "Simulator",
    "StoreMismatchError",
    "Training",
    "TrainingError",
    "check_theta",
    "infer",
    "load_simulations",
    "simulate",
    "tasks",
]
__version__ = "0.1.0"
