"""Signature checks for `ledgerlog verify`, batched and spread over processes once there are
enough of them; a failure is reported as a BAD_SIGNATURE problem where the record was found."""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor

from ledgerlog.engine.crypto import verify as verify_sig
from ledgerlog.engine.procs import exit_with_parent
from ledgerlog.ops.verify.storage import Section

__all__ = ["Signatures"]

_SIG_BATCH = 4096
_PARALLEL_MIN = 2048


def _verify_batch(batch: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
    return [verify_sig(pk, msg, sig) for pk, msg, sig in batch]


class Signatures:
    """Signature checks queued in batches; with several workers the batches run in a process pool
    while this process goes on decoding records."""

    def __init__(self, sec: Section, workers: int, enabled: bool) -> None:
        self.sec = sec
        self.workers = workers
        self.enabled = enabled
        self.count = 0
        self._work: list[tuple[bytes, bytes, bytes]] = []
        self._where: list[tuple[str, str]] = []
        self._pool: ProcessPoolExecutor | None = None
        self._pending: deque[tuple[Future[list[bool]], list[tuple[str, str]]]] = deque()

    def add(self, pubkey: str, message: bytes, signature: str, where: str, what: str) -> None:
        if not self.enabled:
            return
        try:
            item = (bytes.fromhex(pubkey), message, bytes.fromhex(signature))
        except (ValueError, TypeError):
            self.sec.problem("BAD_SIGNATURE", where, f"{what}: pubkey or signature is not hex")
            return
        self._work.append(item)
        self._where.append((where, what))
        if len(self._work) >= _SIG_BATCH:
            self._submit()

    def _submit(self) -> None:
        work, where = self._work, self._where
        self._work, self._where = [], []
        if not work:
            return
        if self.workers > 1:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.workers, initializer=exit_with_parent)
            self._pending.append((self._pool.submit(_verify_batch, work), where))
            while len(self._pending) > 2 * self.workers:
                self._collect(*self._pending.popleft())
        else:
            self._report(_verify_batch(work), where)

    def _collect(self, future: Future[list[bool]], where: list[tuple[str, str]]) -> None:
        self._report(future.result(), where)

    def _report(self, results: list[bool], where: list[tuple[str, str]]) -> None:
        self.count += len(results)
        for ok, (w, what) in zip(results, where):
            if not ok:
                self.sec.problem("BAD_SIGNATURE", w, f"{what}: signature does not verify")

    def flush(self) -> None:
        """Run what is queued and wait for every batch."""
        if self._pool is None and len(self._work) < _PARALLEL_MIN:
            work, where = self._work, self._where
            self._work, self._where = [], []
            self._report(_verify_batch(work), where)
        else:
            self._submit()
        while self._pending:
            self._collect(*self._pending.popleft())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
