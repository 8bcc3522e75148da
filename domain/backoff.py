"""The one retry delay: exponential backoff with jitter.

Reconnecting to the broker (:mod:`gateway.mqtt`), the simulated devices reconnecting, and the
alert webhook retrying (:mod:`lockerd.alerts.webhook`) all wait this long before attempt n + 1.
(The supervisor's restart delay is its own: jitter around the delay, see
:mod:`actors.supervisor`.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["jittered_backoff"]

#: past 2**1000 any maximum has long been reached (and the float still does not overflow)
_MAX_EXPONENT = 1000


def jittered_backoff(
    failures: int, initial: float, maximum: float, draw: Callable[[], float]
) -> float:
    """``d = min(maximum, initial * 2**(failures - 1))`` times a factor in [0.5, 1].

    ``failures`` counts the attempts that failed so far (1 after the first; 0 counts as 1).
    ``draw`` returns a number in [0, 1), e.g. ``random.random``: the jitter keeps many clients
    that failed together from retrying in step, and the delay never drops below half of ``d``.
    """
    exponent = min(max(failures - 1, 0), _MAX_EXPONENT)
    delay = min(maximum, initial * math.ldexp(1.0, exponent))
    return delay * (0.5 + 0.5 * draw())
