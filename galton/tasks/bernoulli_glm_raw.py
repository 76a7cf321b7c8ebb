"""sbibm bernoulli_glm_raw: the Bernoulli GLM observed through its 100 raw spikes (see `bernoulli_glm`)."""

from __future__ import annotations

from galton.tasks import bernoulli_glm
from galton.tasks.base import Task


def task() -> Task:
    return bernoulli_glm.task(raw=True)
