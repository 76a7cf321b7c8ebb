"""Which marginals TMNRE estimates: the user's list of parameter names, checked, as column indices."""

from __future__ import annotations

import itertools
from typing import Sequence


def resolve_marginals(marginals, names: Sequence[str], *, truncate: bool) -> list[tuple[int, ...]]:
    """Column indices of each marginal: the user's (names, as tuples or single strings), or the
    default (every 1-D marginal, plus every pair for at most 6 parameters); with truncation,
    1-D heads are added for parameters that lack one (the box is read from them)."""
    names = list(names)
    if marginals is None:
        chosen = [(n,) for n in names] + (list(itertools.combinations(names, 2)) if len(names) <= 6 else [])
    else:
        if isinstance(marginals, str) or not isinstance(marginals, Sequence) or not marginals:
            raise ValueError(f"marginals must be a non-empty list of tuples of parameter names, got {marginals!r}")
        if isinstance(marginals, tuple) and all(isinstance(m, str) for m in marginals):
            raise ValueError(f"marginals={marginals!r} is ambiguous: pass [{marginals!r}] for that one marginal, or "
                             f"{list(marginals)!r} for each name's 1-D marginal")
        bad = [m for m in marginals if not (isinstance(m, str) or (isinstance(m, (tuple, list)) and all(isinstance(n, str) for n in m)))]
        if bad:
            raise ValueError(f"marginals must be a list of parameter names or tuples of them; {bad[0]!r} is neither")
        chosen = [(m,) if isinstance(m, str) else tuple(m) for m in marginals]
    seen = set()
    for m in chosen:
        if not m:
            raise ValueError("marginals has an empty marginal ()")
        unknown = [n for n in m if n not in names]
        if unknown:
            raise ValueError(f"marginal {m} names {unknown}, which are not parameters; the parameters are {names}")
        if len(set(m)) != len(m):
            raise ValueError(f"marginal {m} names a parameter twice")
        if len(m) > 2:
            raise ValueError(f"marginal {m} has {len(m)} parameters; TMNRE estimates 1-D and 2-D marginals")
        if frozenset(m) in seen:
            raise ValueError(f"marginal {m} is given twice")
        seen.add(frozenset(m))
    if truncate:
        chosen += [(n,) for n in names if frozenset((n,)) not in seen]
    return [tuple(names.index(n) for n in m) for m in chosen]


__all__ = ["resolve_marginals"]
