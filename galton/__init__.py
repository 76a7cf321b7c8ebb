"""galton: simulation-based inference in JAX."""

from galton import tasks
from galton.problem import Blocks, Prior, Problem, ProblemError, Program, Simulator, check_theta
from galton.simulate import SimulationError, simulate
from galton.store import Simulations, StoreMismatchError, load_simulations

__all__ = [
    "Blocks",
    "Prior",
    "Problem",
    "ProblemError",
    "Program",
    "SimulationError",
    "Simulations",
    "Simulator",
    "StoreMismatchError",
    "check_theta",
    "load_simulations",
    "simulate",
    "tasks",
]
__version__ = "0.1.0"
