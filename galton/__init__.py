"""galton: simulation-based inference in JAX."""

import importlib

from galton._cache import enable_compile_cache, program_dir, source_as_imported

enable_compile_cache()

from galton import augment, fisher, lrt, methods, nets, posteriors, summaries, tasks  # noqa: E402
from galton.fisher import fisher_information  # noqa: E402
from galton.infer import infer  # noqa: E402
from galton.keys import as_key  # noqa: E402
from galton.methods import *  # noqa: E402,F403  (every registered method class: NPE, NLE, NRE, ...)
from galton.muse import HierarchicalModel, MuseError, MuseResult, muse  # noqa: E402
from galton.population import population  # noqa: E402
from galton.posteriors import GaussianPosterior, Posterior, SamplesPosterior  # noqa: E402
from galton.predictive import PredictiveCheck, predictive_check  # noqa: E402
from galton.prior import Blocks, Prior, check_theta  # noqa: E402
from galton.problem import Problem, ProblemError, Program, Simulator  # noqa: E402
from galton.simulate import SimulationError, simulate  # noqa: E402
from galton.store import Simulations, StoreMismatchError, load_simulations  # noqa: E402
from galton.train import Training, TrainingError  # noqa: E402

# heavier modules (scikit-learn, SciPy, matplotlib) load on first use: `galton.diagnostics.c2st(...)`
_LAZY = ("calibration", "diagnostics", "plot", "sampling")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f"galton.{name}")
    raise AttributeError(f"module 'galton' has no attribute {name!r}")


__all__ = [
    "Blocks",
    "GaussianPosterior",
    "HierarchicalModel",
    "MuseError",
    "MuseResult",
    "Posterior",
    "Prior",
    "Problem",
    "ProblemError",
    "Program",
    "SamplesPosterior",
    "SimulationError",
    "Simulations",
    "Simulator",
    "StoreMismatchError",
    "Training",
    "TrainingError",
    "as_key",
    "check_theta",
    "fisher_information",
    "population",
    "PredictiveCheck",
    "predictive_check",
    "infer",
    "load_simulations",
    "methods",
    "muse",
    "nets",
    "posteriors",
    "simulate",
    "summaries",
    "tasks",
    *(cls.__name__ for cls in methods.REGISTRY.values()),
    *_LAZY,
]
__version__ = "0.1.0"

if program_dir() is not None:
    source_as_imported()  # the store's key names the code that runs, not a later edit on disk
