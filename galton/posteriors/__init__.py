"""Posteriors: the protocol every method returns (`base`) and one module per kind.

- `GaussianPosterior` (gaussian.py): a Gaussian in unconstrained space (MUSE).
- `FlowPosterior` (flow.py): an amortized flow q(θ | x) (NPE).
- `DensityPosterior` (density.py): learned likelihood or ratio × prior, sampled by MCMC (NLE, NRE).
- `TMNREPosterior`, `MarginalPosterior` (marginal.py): TMNRE's marginals, ratio × truncated prior on a grid.
- `SamplesPosterior` (samples.py): weighted draws (ABC, importance sampling, SMC).

`load` reads any of them back from a directory written by ``save``; a damaged or incomplete
directory is a `PosteriorFileError`.
"""

from galton.posteriors.base import Posterior, PosteriorFileError, load, samples_to_arviz
from galton.posteriors.density import DensityPosterior
from galton.posteriors.flow import FlowPosterior
from galton.posteriors.gaussian import GaussianPosterior
from galton.posteriors.marginal import MarginalPosterior, TMNREPosterior
from galton.posteriors.samples import SamplesPosterior

__all__ = ["DensityPosterior", "FlowPosterior", "GaussianPosterior", "MarginalPosterior", "Posterior", "PosteriorFileError", "SamplesPosterior", "TMNREPosterior", "load", "samples_to_arviz"]
