"""Replicas: one provider served by several OpenAI-compatible servers of one model (`base_urls`).

A request goes to the least busy replica that is not cooling down. A conversation (the request's
`affinity`, its session) stays on the replica that answered it while that one is healthy, so the
server's prefix cache still holds the conversation when the next turn comes. Among equally busy
replicas a new conversation goes to the one with fewer conversations, then to the one its id ranks
first by rendezvous hashing: two API processes that share no state then mostly pick alike. The other
replicas follow in the request's chain, so one that fails before any text hands the request (and the
conversation) to the next with no error to the client.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import OrderedDict
from typing import Callable

MAX_CONVERSATIONS = 100_000     # the conversations remembered per provider; the oldest are forgotten


def replica_key(name: str, url: str) -> str:
    """How a replica is named in the chain, its breaker and its slots: the provider and its server."""
    return f"{name}@{url}"


class Replicas:
    """The servers (`keys`) of one provider: which to ask, in order, for one request."""

    def __init__(self, keys: list[str]):
        self.keys = keys
        self._held: OrderedDict[bytes, str] = OrderedDict()     # conversation -> its replica
        self._count = dict.fromkeys(keys, 0)                    # conversations per replica
        self._lock = threading.Lock()
        self._turn = itertools.count()      # round robin among equals, for requests of no conversation

    def order(self, affinity: str | None, busy: Callable[[str], int],
              cooling: Callable[[str], bool]) -> list[str]:
        """Every replica, the one to ask first at the head: the conversation's own while it is not cooling
        down, else the least busy; cooling ones last (their breaker lets a probe through in time)."""
        conversation = _digest(affinity) if affinity else None
        with self._lock:
            start = next(self._turn)

            def rank(indexed: tuple[int, str]) -> tuple:
                i, key = indexed
                tie = (self._count[key], -_score(conversation, key)) if conversation \
                    else ((i - start) % len(self.keys),)
                return (cooling(key), busy(key), *tie)

            ordered = [key for _, key in sorted(enumerate(self.keys), key=rank)]
            held = self._held.get(conversation) if conversation else None
            if held is not None and not cooling(held):
                ordered.remove(held)
                ordered.insert(0, held)
                self._held.move_to_end(conversation)
            elif conversation:
                self._hold(conversation, ordered[0])
            return ordered

    def answered(self, affinity: str | None, key: str) -> None:
        """`key` answered the conversation: its next turns go there (after a failover, too)."""
        if affinity and key in self._count:
            with self._lock:
                self._hold(_digest(affinity), key)

    def conversations(self) -> dict[str, int]:
        with self._lock:
            return dict(self._count)

    def _hold(self, conversation: bytes, key: str) -> None:
        old = self._held.pop(conversation, None)
        if old is not None:
            self._count[old] -= 1
        self._held[conversation] = key
        self._count[key] += 1
        while len(self._held) > MAX_CONVERSATIONS:
            _, gone = self._held.popitem(last=False)
            self._count[gone] -= 1


def _digest(affinity: str) -> bytes:
    return hashlib.blake2b(affinity.encode(errors="replace"), digest_size=16).digest()


def _score(conversation: bytes, key: str) -> int:
    """Rendezvous hashing: the same in every process (Python's own hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(conversation + key.encode(), digest_size=8).digest(), "big")
