"""The reliability policy: retries, cooldown, deadlines and hedged fallback.

rules.py holds Policy (one provider's settings), backoff and Breaker (cooldown); chain.py holds FallbackChain,
which runs one request down its fallback chain on the event loop. Hand-written rather than tenacity or
stamina: the wait must end early on a cancel, fit inside the first-token deadline and yield to Retry-After,
and a retry is only allowed before a generator's first text; a retry library's hooks took more code.
"""

from .chain import FallbackChain
from .rules import Breaker, Policy, backoff, cooling_fix, counts_as_failure

__all__ = ["Breaker", "FallbackChain", "Policy", "backoff", "cooling_fix", "counts_as_failure"]
