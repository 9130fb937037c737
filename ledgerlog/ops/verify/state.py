"""verify's check of the write-side state (what admission judges new lines against): every key
of it must be what a fresh replay of the log's events makes (``state_fold``), not only the
accounts. A replay writes into a scratch RocksDB, and the two are compared in one ordered walk,
so a long chain's state never sits in memory."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rocksdict import Options, Rdict, WriteBatch

from ledgerlog.engine.admission.state import WriteState
from ledgerlog.engine.admission.state_fold import apply_event, events_in_order, seed_genesis
from ledgerlog.engine.chain import Chain
from ledgerlog.engine.rocks import iter_prefix

from .storage import Section

__all__ = ["state_section"]

#: state keys not from events alone: the chain's first log key (``record_log_origin`` at a writer's
#: open; a replay of a log rotation names it too)
_NOT_FROM_EVENTS = (b"lk",)
_BATCH = 10_000


class _Replayed:
    """Write-side state in a scratch store, as ``WriteState`` reads it."""

    def __init__(self, path: str) -> None:
        self.db = Rdict(path, Options(raw_mode=True))

    def state_get(self, key: bytes) -> bytes | None:
        return self.db.get(key)  # type: ignore[no-any-return]

    def state_get_many(self, keys: list[bytes]) -> list[bytes | None]:
        return [self.db.get(k) for k in keys]

    def state_items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter_prefix(self.db, prefix)

    def commit(self, batch: dict[bytes, bytes | None]) -> None:
        wb = WriteBatch(raw_mode=True)
        for k, v in batch.items():
            if v is None:
                wb.delete(k)
            else:
                wb.put(k, v)
        self.db.write(wb)


def _show(key: bytes) -> str:
    return key.decode("utf-8", errors="backslashreplace")[:120]


def state_section(chain: Chain, scratch: str) -> Section:
    """Replay the log's events into a fresh state and compare it, key by key, with the stored one."""
    sec = Section("write_state")
    log = chain.log
    if not log.atomic_state:  # Kafka: the state beside the node may trail the cluster's log
        sec.notes.append("checked on the embedded log only (a Kafka node's state is caught up from the log "
                         "at its start)")
        return sec
    if log.prune_point() is not None:
        sec.notes.append("the log was pruned: the write-side state cannot be replayed from it (the accounts are "
                         "checked against the balances replay, see supply)")
        return sec
    replayed = _Replayed(scratch)
    try:
        st = WriteState(replayed)  # type: ignore[arg-type]  # the state half of a Log is all it reads
        seed_genesis(st, chain.genesis)
        replayed.commit(st.take_batch())
        n = 0
        try:
            for _off, topic, _p, ev in events_in_order(log, chain.codec):
                apply_event(st, topic, ev, chain.genesis)
                n += 1
                if n % _BATCH == 0:
                    replayed.commit(st.take_batch())
        except Exception as exc:
            sec.problem("SKIPPED", "write-side state", f"replaying the events stopped at event {n}: "
                        f"{type(exc).__name__}: {exc}")
            return sec
        replayed.commit(st.take_batch())
        _compare(sec, log.state_items(b""), replayed.state_items(b""))
        sec.extra["events"] = n
    finally:
        replayed.db.close()
    return sec


def _compare(sec: Section, stored: Iterator[tuple[bytes, bytes]], fresh: Iterator[tuple[bytes, bytes]]) -> None:
    """One ordered walk of both: every key that differs, is missing or is extra is a problem."""
    end = (None, None)
    a: Any = next(stored, end)
    b: Any = next(fresh, end)
    while a != end or b != end:
        if a != end and a[0] in _NOT_FROM_EVENTS:
            a = next(stored, end)
            continue
        if b != end and b[0] in _NOT_FROM_EVENTS:
            b = next(fresh, end)
            continue
        if b == end or (a != end and a[0] < b[0]):
            sec.problem("WRITE_STATE_MISMATCH", f"state {_show(a[0])}", "the stored write-side state holds it, "
                        "a replay of the log does not: it was changed outside admission (tampering or damage); "
                        "restore the data dir from a snapshot")
            a = next(stored, end)
        elif a == end or b[0] < a[0]:
            sec.problem("WRITE_STATE_MISMATCH", f"state {_show(b[0])}", "a replay of the log makes it, the stored "
                        "write-side state lacks it; restore the data dir from a snapshot")
            b = next(fresh, end)
        else:
            sec.checked += 1
            if a[1] != b[1]:
                sec.problem("WRITE_STATE_MISMATCH", f"state {_show(a[0])}", f"stored {_show(a[1])}, a replay of the "
                            f"log makes {_show(b[1])}; restore the data dir from a snapshot")
            a, b = next(stored, end), next(fresh, end)
