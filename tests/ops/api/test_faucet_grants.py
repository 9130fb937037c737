"""The faucet's grant records (ops/api/faucet_grants.py): the same decisions as the in-memory token
buckets (ops/api/limits.py), kept across a reopen of the file with the remaining wait, bounded in
size, safe against a clock set back, and a damaged file refusing rather than granting blindly."""
from __future__ import annotations

import random
import sqlite3

import pytest

from ledgerlog.engine.errors import StorageError
from ledgerlog.ops.api.faucet_grants import GrantLimits, grants_path
from ledgerlog.ops.api.limits import TokenBuckets


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("seed", range(4))
def test_decisions_equal_the_token_buckets(tmp_path, seed: int) -> None:
    rng = random.Random(seed)
    burst, interval = rng.randint(1, 4), rng.choice([5.0, 60.0, 3600.0])
    clock = Clock()
    grants = GrantLimits(str(tmp_path / "g.sqlite"), {"ip": (burst, interval)}, clock=clock)
    buckets = TokenBuckets(1 / interval, burst, clock=clock)
    allowed = refused = 0
    for _ in range(400):
        clock.now += rng.random() * interval * 0.6
        key = rng.choice("abc")
        mine, theirs = grants.wait("ip", key), buckets.wait(key)
        assert mine == pytest.approx(theirs, abs=1e-6), (key, clock.now)
        if mine == 0:
            grants.take("ip", key)
            assert buckets.take(key) == 0
            allowed += 1
        else:
            refused += 1
    assert allowed and refused  # both branches were exercised
    grants.close()


def test_a_reopened_file_keeps_the_remaining_wait(tmp_path) -> None:
    path, clock = grants_path(str(tmp_path)), Clock()
    limits = {"ip": (2, 60.0), "address": (1, 3600.0)}
    first = GrantLimits(path, limits, clock=clock)
    for _ in range(2):
        assert first.wait("ip", "10.0.0.1") == 0
        first.take("ip", "10.0.0.1")
    first.take("address", "aa" * 20)
    assert first.wait("ip", "10.0.0.1") == pytest.approx(60)
    first.close()  # the node stops

    clock.now += 25
    again = GrantLimits(path, limits, clock=clock)  # and starts again
    assert again.wait("ip", "10.0.0.1") == pytest.approx(35)
    assert again.wait("address", "aa" * 20) == pytest.approx(3575)
    assert again.wait("ip", "10.0.0.2") == 0 and again.wait("address", "bb" * 20) == 0
    clock.now += 35
    assert again.wait("ip", "10.0.0.1") == 0
    again.close()


def test_records_are_bounded_to_what_the_intervals_need(tmp_path) -> None:
    clock = Clock()
    grants = GrantLimits(str(tmp_path / "g.sqlite"), {"ip": (1, 10.0), "address": (3, 100.0)}, clock=clock,
                         max_keys=50)
    for i in range(80):
        grants.take("ip", f"10.0.{i}.1")
        grants.take("address", f"{i:040x}")
    clock.now += 61  # past the pruning pause: the cap applies
    assert grants.count("ip") == 0  # every IP bucket is full again after 10 s
    assert grants.count("address") == 50  # the 50 furthest from full are kept
    assert grants.wait("address", f"{79:040x}") == 0  # burst 3: one grant left two in hand
    clock.now += 100
    assert grants.count() == 0
    grants.close()


def test_a_clock_set_back_never_waits_longer_than_an_empty_bucket(tmp_path) -> None:
    clock = Clock()
    grants = GrantLimits(str(tmp_path / "g.sqlite"), {"ip": (2, 60.0)}, clock=clock)
    grants.take("ip", "x")
    grants.take("ip", "x")
    clock.now -= 86_400  # a day back
    assert 0 < grants.wait("ip", "x") <= 60.0
    grants.close()


def test_no_limit_records_nothing(tmp_path) -> None:
    grants = GrantLimits(str(tmp_path / "g.sqlite"), {"ip": (1, 0.0)})
    for _ in range(5):
        assert grants.wait("ip", "x") == 0
        grants.take("ip", "x")
    assert grants.count() == 0
    grants.close()


def test_a_damaged_file_refuses_rather_than_grants(tmp_path, caplog) -> None:
    path = tmp_path / "g.sqlite"
    path.write_bytes(b"not a database" * 100)
    grants = GrantLimits(str(path), {"ip": (1, 60.0)})
    with pytest.raises(StorageError, match="remove the file"):
        grants.wait("ip", "x")
    grants.take("ip", "x")  # an admitted grant whose record cannot be written is logged, not undone
    assert "not recorded" in caplog.text
    path.unlink()
    fresh = GrantLimits(str(path), {"ip": (1, 60.0)})
    assert fresh.wait("ip", "x") == 0
    fresh.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
