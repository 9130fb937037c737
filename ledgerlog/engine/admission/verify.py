"""Ed25519 verification of a chunk's signatures ahead of the sequential checks.

Signatures are independent of state, so they can be checked in bulk (and in parallel) before
the rules run; the rules then read ``Signed.sig_ok`` at the point of PROTOCOL.md's check order,
so the codes reported are the same as with checking inline."""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor

from ..crypto import h_bytes, verify
from ..errors import Rejection
from ..procs import exit_with_parent
from .lines import BlockLine, Item, Signed, SignedLine

__all__ = ["Verifier", "Pending", "SignatureCache"]


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
        return h_bytes(b"%s\0%s\0%s" % (s.pubkey.encode(), s.signature.encode(), s.canonical()))

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
        self.cache = SignatureCache()
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
        known = self.cache.verified
        for s in signed:
            try:
                if known(s):
                    s.sig_ok = True
                    continue
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
