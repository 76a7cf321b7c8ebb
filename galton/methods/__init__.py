"""One module per method family, each with its loss at the top and its settings object."""

from galton.methods.nle import NLE
from galton.methods.npe import NPE
from galton.methods.nre import NRE

__all__ = ["NLE", "NPE", "NRE"]
