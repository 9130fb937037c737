"""Ed25519 verification of a chunk's signatures ahead of the sequential checks.

Signatures are independent of state, so they can be checked in bulk (and in parallel) before
the rules run; the rules then read ``Signed.sig_ok`` at the point of PROTOCOL.md's check order,
so the codes reported are the same as with checking inline."""
from __future__ import annotations

from concurrent.futures import Future, ProcessPoolExecutor
from typing import Sequence

from ..crypto import verify
from ..errors import Rejection
from ..procs import exit_with_parent
from .lines import BlockLine, Item, Signed, SignedLine

__all__ = ["Verifier", "Pending"]


def _verify_batch(batch: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
    return [verify(pk, msg, sig) for pk, msg, sig in batch]


class Pending:
    """Signature checks of one chunk, running in the pool; ``apply`` waits and stores results."""

    def __init__(self, targets: list[Signed], futures: list[Future[list[bool]]]) -> None:
        self.targets = targets
        self.futures = futures

    def apply(self) -> None:
        results = [ok for f in self.futures for ok in f.result()]
        for s, ok in zip(self.targets, results):
            s.sig_ok = ok


class Verifier:
    """Checks signatures of parsed lines; with ``workers`` > 1, in a process pool, while the
    caller goes on (``submit`` returns at once; the admitter checks the rules of the previous
    chunk meanwhile)."""

    def __init__(self, workers: int = 1, min_parallel: int = 256) -> None:
        self.workers = workers
        self.min_parallel = min_parallel
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, items: Sequence[Item]) -> Pending | None:
        """Start checking the signatures of ``items``; None when they are left to the rules."""
        signed: list[Signed] = []
        for item in items:
            if isinstance(item, BlockLine):
                signed.append(item.header)
                signed.extend(item.transactions)
            elif isinstance(item, SignedLine):
                signed.append(item.signed)
        if self.workers <= 1 or len(signed) < self.min_parallel:
            return None  # inline, lazily: duplicates and early rejections then cost no verification
        work, targets = [], []
        for s in signed:
            try:
                work.append((bytes.fromhex(s.pubkey), s.canonical(), bytes.fromhex(s.signature)))
                targets.append(s)
            except Rejection:
                continue  # out-of-range value: the rules report it
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, initializer=exit_with_parent)
        step = -(-len(work) // self.workers)
        return Pending(targets, [self._pool.submit(_verify_batch, work[i:i + step])
                                 for i in range(0, len(work), step)])

    def prefetch(self, items: Sequence[Item]) -> None:
        """Check now (blocking) what ``submit`` would check in the background."""
        pending = self.submit(items)
        if pending is not None:
            pending.apply()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
