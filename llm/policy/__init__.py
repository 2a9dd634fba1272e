"""The reliability policy, in one package: retries, cooldown, deadlines and hedged fallback.

    rules.py    Policy (one provider's settings), backoff, Breaker (cooldown)
    chain.py    FallbackChain: one request down its fallback chain, on the event loop

The router hands one request's fallback chain to `FallbackChain`. Each provider call (an *attempt*)
runs as a task of its own and reports text, its end or its error on one queue; the chain watches
the clock, so a deadline or a cancel never waits on a blocked socket (a provider whose library
blocks is read from a worker thread: `Provider.astream`):

- retries: an attempt retries transient failures (408/409/429/5xx, a lost connection) before any
  text, with exponential backoff and jitter, or after the backend's Retry-After when that is short;
- deadlines: no text within `first_token_timeout`, or silence for `stall_timeout` mid-reply, ends
  the attempt with a 504 (and its socket is shut: see `providers.transport`);
- cooldown: a provider that timed out or failed `FAILURES_TO_OPEN` requests in a row with signs of ill
  health (no connection, a timeout, a 5xx or a 429: `counts_as_failure`) is skipped for `cooldown`
  seconds; then one probe request decides whether it is back. A failure one request's content caused
  (a 4xx, a refused field, an empty reply) never cools a provider down for everyone;
- hedging: with `hedge_after`, a provider that has said nothing by then gets its first fallback
  started beside it; whichever produces text first answers and the other is cancelled.

Hand-written rather than tenacity or stamina: the wait must end early on a cancel (Stop, a client
hanging up), fit inside the request's first-token deadline and yield to Retry-After, and a retry is
only allowed before the first text of a generator; expressing that through a retry library's hooks
took more code than the loop below.
"""

from .chain import FallbackChain
from .rules import Breaker, Policy, backoff, cooling_fix, counts_as_failure

__all__ = ["Breaker", "FallbackChain", "Policy", "backoff", "cooling_fix", "counts_as_failure"]
