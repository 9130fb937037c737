"""Signature checks, and the parallel stage of admission that carries them.

Signatures are independent of state, so they can be checked in bulk (and in parallel) before
the rules run; the rules then read ``Signed.sig_ok`` at the point of PROTOCOL.md's check order,
so the codes reported are the same as with checking inline. With more than one worker the whole
state-free part of a chunk (parsing, canonical bytes, ids, signatures: ``prepare.py``) runs in a
process pool, a slice of the chunk per task, while the admitter checks the rules of earlier
chunks."""
from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from itertools import islice

from ..errors import Rejection
from ..procs import exit_with_parent
from .lines import Item, Signed, parse_line
from .prepare import Ahead, Prepared, prepare_lines, rebuild, signature_key

__all__ = ["Verifier", "Pending", "SignatureCache", "parse_all"]

log = logging.getLogger("ledgerlog.admission")

#: Signature keys the admitter remembered lately, sent with every slice (workers learn them)
_RECENT_KEYS = 2_000
#: A chunk this large (bytes) goes to the workers whatever its line count
_PARALLEL_BYTES = 128 * 1024


class SignatureCache:
    """Signatures already verified for admitted mempool submissions, so a block that confirms
    them does not verify them again (bitcoind's signature cache). A signature's validity is a
    pure function of (pubkey, message, signature), so a hit is always right, whatever the state
    did since; the cache only saves work. In memory, bounded (entries are 32-byte digests of
    the triple: about 10 MB when full), oldest out first."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._known: dict[bytes, None] = {}
        self.hits = 0

    @staticmethod
    def _key(s: Signed) -> bytes:
        return signature_key(s.pubkey, s.signature, s.canonical())

    def remember(self, s: Signed) -> None:
        if len(self._known) >= self.capacity:
            del self._known[next(iter(self._known))]
        self._known[self._key(s)] = None

    def verified(self, s: Signed) -> bool:
        """True if this exact signed body was verified before (``s.canonical()`` may raise)."""
        if self._key(s) in self._known:
            self.hits += 1
            return True
        return False

    def recent(self, n: int) -> list[bytes]:
        """The keys of the ``n`` signatures remembered last."""
        return list(islice(reversed(self._known), n))


def parse_all(lines: Sequence[bytes | str]) -> list[Item | Rejection]:
    """Each line parsed inline, or its rejection: the reference the pool's preparation equals."""
    out: list[Item | Rejection] = []
    for line in lines:
        try:
            out.append(parse_line(line))
        except Rejection as rej:
            out.append(rej)
    return out


class Pending:
    """A chunk's lines being prepared in the pool; ``items`` waits and rebuilds them in order. If
    the pool broke (a worker died: killed, or out of memory), the chunk is parsed inline instead
    and ``broken`` is told, so the next chunk gets a new pool."""

    def __init__(self, futures: list[Future[Prepared]], cache: SignatureCache, lines: Sequence[bytes | str],
                 broken: Callable[[], None]) -> None:
        self.futures = futures
        self.cache = cache
        self._lines, self._broken = lines, broken

    def items(self) -> list[Item | Rejection]:
        out: list[Item | Rejection] = []
        try:
            for f in self.futures:
                prepared, hits = f.result()
                self.cache.hits += hits
                out.extend(map(rebuild, prepared))
        except BrokenProcessPool:
            self._broken()
            return parse_all(self._lines)
        return out


_SIGNED, _SIGNED_TEXT = b'"signature"', '"signature"'  # in every signed line, in no share


class Verifier:
    """Where the state-free work of admission runs. With one worker, inline and lazily (the rules
    verify a signature when they reach it, so duplicates and early rejections cost none); with
    more, chunks of at least ``min_parallel`` lines (or 128 KiB) go to a process pool and
    ``prepare`` returns at once."""

    def __init__(self, workers: int = 1, min_parallel: int = 256) -> None:
        self.workers = workers
        self.min_parallel = min_parallel
        self.cache = SignatureCache()
        self.prepared_lines = 0  # lines that went through the pool (for tests and metrics)
        self.pools_lost = 0  # pools that broke (a worker died) and were replaced
        self._pool: ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()  # ingest threads prepare at once: one pool between them

    def parallel(self, lines: Sequence[bytes | str]) -> bool:
        """Whether ``prepare`` sends these lines to the pool: big chunks with a signature to check.
        A chunk of unsigned lines (shares) admits faster inline on 2 cores than parsed in the pool
        and sent back (make bench: 26.7k against 22.8k shares/s); the inline path is the reference
        the pool's must equal, so a signed line this test misses is admitted the same way."""
        return (self.workers > 1 and (len(lines) >= self.min_parallel or sum(map(len, lines)) >= _PARALLEL_BYTES)
                and any((_SIGNED in ln) if isinstance(ln, bytes) else (_SIGNED_TEXT in ln) for ln in lines))

    def prepare(self, lines: Sequence[bytes | str], ahead: Ahead | None = None) -> Pending:
        """Start preparing ``lines`` in the pool, in slices of about equal bytes (two per worker,
        so a slow slice does not leave a worker idle); with ``ahead``, the workers also make the
        records they can (``prepare.py``)."""
        pool = self._the_pool()
        known = self.cache.recent(_RECENT_KEYS)
        slices = self.workers * 2
        target = sum(map(len, lines)) / slices
        futures: list[Future[Prepared]] = []
        start, size = 0, 0
        try:
            for i, line in enumerate(lines):
                size += len(line)
                if size >= target and len(futures) < slices - 1:
                    futures.append(pool.submit(prepare_lines, lines[start:i + 1], known, ahead))
                    start, size = i + 1, 0
            if start < len(lines) or not futures:
                futures.append(pool.submit(prepare_lines, lines[start:], known, ahead))
        except BrokenProcessPool:  # broke since its last chunk: this one is parsed inline (``items``)
            futures = [_broken_future()]
        self.prepared_lines += len(lines)
        return Pending(futures, self.cache, lines, partial(self._lost, pool))

    def _the_pool(self) -> ProcessPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                # spawned, never forked: the caller has threads (a node's HTTP server, Kafka clients,
                # OpenTelemetry), and a child forked while one of them holds a lock crashed or hung.
                # Not a fork server either: its children hold its lifeline pipe and it is their parent,
                # so a killed caller left both waiting for each other (exit_with_parent never fired)
                self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=exit_with_parent)
            return self._pool

    def _lost(self, pool: ProcessPoolExecutor) -> None:
        """``pool`` broke: forget it (once), so the next chunk starts a new one."""
        with self._pool_lock:
            if pool is not self._pool:
                return
            self._pool = None
            self.pools_lost += 1
        log.warning("a verify worker died; this chunk is prepared inline and the next gets new workers")
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _broken_future() -> Future[Prepared]:
    """A future that failed as a broken pool's do (its chunk is then parsed inline)."""
    f: Future[Prepared] = Future()
    f.set_exception(BrokenProcessPool("the verify workers' pool broke"))
    return f
