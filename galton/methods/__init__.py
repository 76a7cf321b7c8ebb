"""One module per method family, each with its loss at the top and its settings object.

Importing this package registers every method; `get` and `names` read the registry.
"""

from galton.methods.base import REGISTRY, get, names, register
from galton.methods.nle import NLE  # noqa: F401  (importing a method module registers it)
from galton.methods.npe import NPE  # noqa: F401
from galton.methods.nre import NRE  # noqa: F401
from galton.methods.tmnre import TMNRE  # noqa: F401  (marginal heads and truncation rounds of its own)
from galton.methods.abc import MCMCABC, RejectionABC, SMCABC  # noqa: F401  (ABC: loops of their own)
from galton.methods.gold import ALICE, ALICES, CARL, CASCAL, RASCAL, ROLR, SALLINO, SALLY, SCANDAL, ScoreNPE  # noqa: F401  (mining gold)
from galton.methods.nuts import NUTS  # noqa: F401  (the exact baseline for Programs)
from galton.methods.ic import IC  # noqa: F401  (inference compilation: an amortized proposal for importance sampling)

__all__ = ["REGISTRY", "get", "names", "register", *(cls.__name__ for cls in REGISTRY.values())]
