"""Approximate Bayesian computation: rejection (with regression adjustment), MCMC and SMC.

Each method owns its loop (``run``) and returns a `SamplesPosterior` of (weighted) draws.
Distances are Euclidean on MAD-scaled summaries unless a distance is given; summaries are x
itself unless a summary function (e.g. a fitted `galton.summaries.Compressor`) is given.
"""

from galton.methods.abc.distances import ABCError, Discrepancy, discrepancy, mad_scale, summarise
from galton.methods.abc.mcmc import MCMCABC
from galton.methods.abc.rejection import RejectionABC, linear_adjustment
from galton.methods.abc.smc import SMCABC

__all__ = ["ABCError", "Discrepancy", "MCMCABC", "RejectionABC", "SMCABC", "discrepancy", "linear_adjustment", "mad_scale", "summarise"]
