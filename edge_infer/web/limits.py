"""Bounded work per server: at most `slots` requests decode and classify at once (the same
number as the pool's classifiers), a few more wait, the rest get 503 with Retry-After; memory
freed after each; uploads kept in memory (never spooled to a temporary file on disk)."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable
from typing import TypeVar

from starlette.formparsers import MultiPartParser

T = TypeVar("T")
RETRY_AFTER_S = 5


class Busy(Exception):
    """Every slot taken and the queue full (or the wait too long): answer 503."""


def _malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0), which hands freed heap pages back to the system (a decoded image
    is tens of MB); a no-op elsewhere."""
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    return (lambda: trim(0)) if trim else (lambda: None)


release_memory = _malloc_trim()


class WorkGate:
    """`slots` concurrent calls; up to `queue` more wait at most `wait_s` seconds each."""

    def __init__(self, slots: int, queue: int, wait_s: float) -> None:
        self.slots, self.queue, self.wait_s = slots, queue, wait_s
        self._free = threading.Semaphore(slots)
        self._lock = threading.Lock()
        self._waiting = 0

    def run(self, work: Callable[..., T], *args: object) -> T:
        """work(*args) in a free slot (from a worker thread); Busy if none frees up in time."""
        with self._lock:
            if self._waiting >= self.queue:
                raise Busy(f"the server is busy ({self.slots} images in work, {self.queue} "
                           "waiting): try again in a few seconds")
            self._waiting += 1
        try:
            got = self._free.acquire(timeout=self.wait_s)
        finally:
            with self._lock:
                self._waiting -= 1
        if not got:
            raise Busy(f"the server is busy: no slot freed within {self.wait_s:g} s; try again")
        try:
            return work(*args)
        finally:
            self._free.release()
            release_memory()


def keep_uploads_in_memory(max_bytes: int) -> None:
    """Make Starlette keep uploaded files of up to `max_bytes` in memory: its default spools
    any part over 1 MiB to a temporary file (patient pixels on an SD card). A process-wide
    setting: every app in the process gets the largest limit asked for."""
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, max_bytes)
