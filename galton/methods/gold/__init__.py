"""Mining gold: estimators trained on the joint likelihood ratio and joint score of a Program.

- `pairs.py`: `pair_simulations`, the (θ0, θ1, x, y, log r, t0, t1) rows the ratio estimators train on.
- `mixture.py`: `mixture_pairs`, every simulation as rows at many θ0, importance-weighted by the joint density.
- `ratios.py`: CARL, ROLR, ALICE and their score-augmented forms CASCAL, RASCAL, ALICES.
- `scored.py`: SCANDAL (likelihood flow + score) and score-augmented NPE.
- `sally.py`: SALLY, the score at θ_ref regressed as summaries, then NRE on them.
- `sallino.py`: SALLINO, those summaries projected on θ − θ_ref, then a 1-D density.
"""

from galton.methods.gold.mixture import mixture_pairs
from galton.methods.gold.pairs import pair_simulations
from galton.methods.gold.ratios import ALICE, ALICES, CARL, CASCAL, RASCAL, ROLR, ParameterizedRatio, log_ratio
from galton.methods.gold.sallino import SALLINO
from galton.methods.gold.sally import SALLY
from galton.methods.gold.scored import SCANDAL, ScoreNPE

__all__ = ["pair_simulations", "mixture_pairs", "ParameterizedRatio", "CARL", "ROLR", "ALICE", "CASCAL", "RASCAL", "ALICES", "SCANDAL", "ScoreNPE", "SALLY", "SALLINO", "log_ratio"]
