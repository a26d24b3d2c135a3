"""Per-object trouble: what keeps failing for one object alone, and when to try it again.

Pure bookkeeping, keyed by object uid. A reconciler that hits an error confined
to one object (its status patch is refused, its entry cannot be written, its
planner raises, its run records cannot be applied) records it here instead of
failing the batch: the object is tried again after an exponential backoff (2 s
doubling to 5 minutes), the other objects go on, and the Warning event for it
goes out once per episode (again only when the reason changes). Success clears
the episode.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

BASE_SECONDS = 2.0
CAP_SECONDS = 300.0


@dataclass
class Trouble:
    reason: str
    message: str
    failures: int = 1
    retry_at: float = 0.0  # monotonic
    announce: bool = True  # the episode's Warning event is still to be posted


@dataclass
class TroubleBook:
    clock: Callable[[], float] = time.monotonic
    base: float = BASE_SECONDS
    cap: float = CAP_SECONDS
    _book: dict[str, Trouble] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def due(self, uid: str) -> bool:
        """True unless the object is in trouble and its backoff has not passed."""
        with self._lock:
            trouble = self._book.get(uid)
            return trouble is None or self.clock() >= trouble.retry_at

    def failed(self, uid: str, reason: str, message: str) -> Trouble:
        """Record a failure; the returned trouble says whether to announce it."""
        with self._lock:
            previous = self._book.get(uid)
            failures = 1 if previous is None else previous.failures + 1
            delay = min(self.base * 2 ** (failures - 1), self.cap)
            announce = previous is None or previous.reason != reason
            trouble = Trouble(reason, message, failures, self.clock() + delay, announce)
            self._book[uid] = trouble
            return trouble

    def cleared(self, uid: str) -> Trouble | None:
        """The object is fine again; returns the episode that ended, if any."""
        with self._lock:
            return self._book.pop(uid, None)

    def get(self, uid: str) -> Trouble | None:
        with self._lock:
            return self._book.get(uid)

    def __len__(self) -> int:
        with self._lock:
            return len(self._book)
