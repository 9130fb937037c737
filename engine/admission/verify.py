"""Ed25519 verification of a chunk's signatures ahead of the sequential checks.

Signatures are independent of state, so they can be checked in bulk (and in parallel) before
the rules run; the rules then read ``Signed.sig_ok`` at the point of PROTOCOL.md's check order,
so the codes reported are the same as with checking inline."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Sequence

from ..crypto import verify
from ..errors import Rejection
from .lines import BlockLine, Item, Signed, SignedLine

__all__ = ["Verifier"]


def _verify_batch(batch: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
    return [verify(pk, msg, sig) for pk, msg, sig in batch]


class Verifier:
    """Checks signatures of parsed lines; with ``workers`` > 1, in a process pool."""

    def __init__(self, workers: int = 1, min_parallel: int = 256) -> None:
        self.workers = workers
        self.min_parallel = min_parallel
        self._pool: ProcessPoolExecutor | None = None

    def prefetch(self, items: Sequence[Item]) -> None:
        signed: list[Signed] = []
        for item in items:
            if isinstance(item, BlockLine):
                signed.append(item.header)
                signed.extend(item.transactions)
            elif isinstance(item, SignedLine):
                signed.append(item.signed)
        if self.workers <= 1 or len(signed) < self.min_parallel:
            return  # inline, lazily: duplicates and early rejections then cost no verification
        work, targets = [], []
        for s in signed:
            try:
                work.append((bytes.fromhex(s.pubkey), s.canonical(), bytes.fromhex(s.signature)))
                targets.append(s)
            except Rejection:
                continue  # out-of-range value: the rules report it
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers)
        step = -(-len(work) // self.workers)
        parts = [work[i:i + step] for i in range(0, len(work), step)]
        results = [ok for part in self._pool.map(_verify_batch, parts) for ok in part]
        for s, ok in zip(targets, results):
            s.sig_ok = ok

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

