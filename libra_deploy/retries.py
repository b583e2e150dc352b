"""When a failed step is tried again: how many times, and after how long."""

from __future__ import annotations

import random

#: Retries after the first attempt (the seed's max_retries)...
MAX_RETRIES = 2
#: ...so a step runs at most three times, whether its attempts ended in an error or a lost worker.
MAX_ATTEMPTS = MAX_RETRIES + 1
MAX_DELAY_S = 60.0


def backoff_delay(retries_so_far: int, base_s: float) -> float:
    """Exponential backoff with full jitter: base, 2 x base, 4 x base... capped at a minute."""
    ceiling = min(MAX_DELAY_S, base_s * (2**retries_so_far))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography
