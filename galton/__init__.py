"""galton: simulation-based inference in JAX."""

from galton.problem import Blocks, Prior, Problem, ProblemError, Program, Simulator, check_theta

__all__ = ["Blocks", "Prior", "Problem", "ProblemError", "Program", "Simulator", "check_theta"]
__version__ = "0.1.0"
