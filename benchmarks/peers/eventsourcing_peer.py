"""Peer: the ``eventsourcing`` library, SQLite persistence (PERSISTENCE_MODULE=eventsourcing.sqlite),
used as its documentation shows: a ``Ledger`` Application records each transfer and block credit
as an aggregate event (``save`` of 1000 new aggregates per call, one SQLite transaction), and a
``Balances`` ProcessApplication follows the Ledger's notification log, its policy updating
``Account`` aggregates (collected on the processing event, recorded with the tracking position
in one transaction per event). Ingest = Ledger.save; rebuild = a fresh Balances pulling and
processing the whole notification log. Aggregate cache on (no fast-forward: one process)."""
from __future__ import annotations

import os
import time
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from ..history import checksum
from .base import figure, load, main, moves, reference

SAVE_BATCH = 1000
PULL_SECTION = 500


def _env(work: str, balances_db: str) -> dict[str, str]:
    return {"PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "LEDGER_SQLITE_DBNAME": os.path.join(work, "ledger.sqlite"),
            "BALANCES_SQLITE_DBNAME": os.path.join(work, balances_db),
            "AGGREGATE_CACHE_MAXSIZE": "100000", "AGGREGATE_CACHE_FASTFORWARD": "n",
            "DEEPCOPY_FROM_AGGREGATE_CACHE": "n"}


def _classes() -> dict[str, Any]:
    from eventsourcing.application import AggregateNotFoundError, Application
    from eventsourcing.dispatch import singledispatchmethod
    from eventsourcing.domain import Aggregate, event
    from eventsourcing.system import ProcessApplication

    class Transfer(Aggregate):
        @event("Recorded")
        def __init__(self, sender: str, recipient: str, amount: int, fee: int) -> None:
            self.sender, self.recipient, self.amount, self.fee = sender, recipient, amount, fee

    class BlockCredit(Aggregate):
        @event("Recorded")
        def __init__(self, producer: str, credit: int) -> None:
            self.producer, self.credit = producer, credit

    class Account(Aggregate):
        @staticmethod
        def create_id(address: str) -> UUID:
            return uuid5(NAMESPACE_URL, f"ledgerlog-bench/account/{address}")

        @event("Opened")
        def __init__(self, address: str) -> None:
            self.address, self.balance = address, 0

        @event("Changed")
        def change(self, delta: int) -> None:
            self.balance += delta

    class Ledger(Application):
        log_section_size = PULL_SECTION

        def record(self, events: list[list[Any]]) -> None:
            self.save(*[Transfer(e[1], e[2], e[3], e[4]) if e[0] == "t" else BlockCredit(e[1], e[2])
                        for e in events])

    class Balances(ProcessApplication):
        pull_section_size = PULL_SECTION

        @singledispatchmethod
        def policy(self, domain_event: Any, processing_event: Any) -> None:
            """Other events move nothing."""

        def _apply(self, pairs: Any, processing_event: Any) -> None:
            touched: dict[str, Any] = {}
            for addr, delta in pairs:
                acct = touched.get(addr)
                if acct is None:
                    try:
                        acct = self.repository.get(Account.create_id(addr))
                    except AggregateNotFoundError:
                        acct = Account(addr)
                    touched[addr] = acct
                acct.change(delta)
            processing_event.collect_events(*touched.values())

        @policy.register(Transfer.Recorded)  # type: ignore[attr-defined]
        def _(self, ev: Any, processing_event: Any) -> None:
            self._apply(moves(("t", ev.sender, ev.recipient, ev.amount, ev.fee)), processing_event)

        @policy.register(BlockCredit.Recorded)  # type: ignore[attr-defined]
        def _(self, ev: Any, processing_event: Any) -> None:
            self._apply(moves(("b", ev.producer, ev.credit)), processing_event)

        def balances(self, addresses: set[str]) -> dict[str, int]:
            return {a: self.repository.get(Account.create_id(a)).balance for a in addresses}

    return {"Ledger": Ledger, "Balances": Balances}


def run(args: dict[str, Any]) -> dict[str, Any]:
    import eventsourcing  # noqa: F401 - fail early and clearly when it is not installed
    events = load(args)
    work = args["work"]
    cls = _classes()
    ledger = cls["Ledger"](env=_env(work, "balances-live.sqlite"))
    t0 = time.perf_counter()
    for i in range(0, len(events), SAVE_BATCH):
        ledger.record(events[i:i + SAVE_BATCH])
    ingest_s = time.perf_counter() - t0

    balances = cls["Balances"](env=_env(work, "balances-rebuild.sqlite"))
    balances.follow(ledger.name, ledger.notification_log)
    t0 = time.perf_counter()
    balances.pull_and_process(ledger.name)
    rebuild_s = time.perf_counter() - t0
    processed = balances.recorder.max_tracking_id(ledger.name) or 0
    addresses = {a for e in events for a, _ in moves(e)}
    got = checksum(balances.balances(addresses))
    balances.close()
    ledger.close()
    return {"ingest": figure(len(events), ingest_s), "rebuild": figure(processed, rebuild_s),
            "checksum": got, "checksum_ok": got == reference(events),
            "config": f"eventsourcing, SQLite files; Ledger.save of {SAVE_BATCH} new aggregates per call; "
                      "Balances ProcessApplication (follow + pull_and_process, section "
                      f"{PULL_SECTION}) updating Account aggregates, one transaction per event; "
                      "aggregate cache on, fast-forward and deepcopy off"}


if __name__ == "__main__":
    main(run)
