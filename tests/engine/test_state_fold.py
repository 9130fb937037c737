"""engine.admission.state_fold: folding the admitted events from genesis gives byte for byte the
write-side state admission produced on the embedded log, and ``catch_up`` (the Kafka backend's
restart path) resumes from stored positions, in batches, across interruptions."""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import pytest
from conftest import admit_ok

from ledgerlog.engine import topics as T
from ledgerlog.engine.admission.state import WriteState
from ledgerlog.engine.admission.state_fold import apply_event, catch_up, order_key, seed_genesis
from ledgerlog.engine.chain import Chain, init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.log import Log, LogRecord, MemoryLog, Record
from ledgerlog.engine.log.base import StateWrites, TopicPartition
from ledgerlog.ops.devtools.histgen import generate, make_genesis

EVENTS = 2000


class FoldTarget(Log):
    """A log that reads another log's records and keeps a write-side state with positions, not
    atomically: the shape of the Kafka backend, without a broker."""

    atomic_state = False

    def __init__(self, source: Log, fail_after: int | None = None) -> None:
        self.source = source
        self.state: dict[bytes, bytes] = {}
        self.pos: dict[TopicPartition, int] = {}
        self.commits = 0
        self.fail_after = fail_after

    keeps_state = True  # type: ignore[assignment]

    def create_topics(self, partitions: Mapping[str, int]) -> None:
        raise AssertionError("read-only")

    def topics(self) -> dict[str, int]:
        return self.source.topics()

    def append(self, records: Sequence[Record], state: StateWrites | None = None) -> list[tuple[int, int]]:
        raise AssertionError("read-only")

    def read(self, topic: str, partition: int, offset: int, max_records: int = 1000) -> list[LogRecord]:
        return self.source.read(topic, partition, offset, max_records)

    def end_offsets(self, topic: str) -> list[int]:
        return self.source.end_offsets(topic)

    def commit_positions(self, group: str, positions: Mapping[TopicPartition, int]) -> None:
        raise AssertionError("unused")

    def positions(self, group: str) -> dict[TopicPartition, int]:
        return {}

    def state_get(self, key: bytes) -> bytes | None:
        return self.state.get(key)

    def state_items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for k in sorted(k for k in self.state if k.startswith(prefix)):
            yield k, self.state[k]

    def state_positions(self) -> dict[TopicPartition, int]:
        return dict(self.pos)

    def commit_state(self, state: StateWrites, positions: Mapping[TopicPartition, int]) -> None:
        if self.fail_after is not None and self.commits >= self.fail_after:
            raise RuntimeError("crash")
        self.commits += 1
        for k, v in state.items():
            if v is None:
                self.state.pop(k, None)
            else:
                self.state[k] = v
        self.pos.update(positions)


def _embedded_history(tmp_path, **options) -> Chain:
    genesis, keys = make_genesis(11, wallets=8)
    cfg = Config(data_dir=str(tmp_path / "emb"), sync=False)
    init_chain(cfg, genesis)
    chain = open_chain(cfg)
    lines = list(generate(genesis, keys, events=EVENTS, seed=5, **options))
    s = chain.admitter.admit(lines)
    assert s.accepted > 0
    return chain


def _fold_from_genesis(chain: Chain) -> list[tuple[bytes, bytes]]:
    """Every admitted event, ordered by order_key (ties: topic, partition, offset), folded."""
    out = MemoryLog()
    st = WriteState(out)
    seed_genesis(st, chain.genesis)
    events = []
    for t in T.EVENT_TOPICS:
        for p in range(len(chain.log.end_offsets(t))):
            for r in chain.log.scan(t, p):
                ev = chain.codec.decode(t, r.value)
                events.append((order_key(t, ev), T.EVENT_TOPICS.index(t), p, r.offset, t, ev))
    events.sort(key=lambda e: e[:4])
    for *_, t, ev in events:
        apply_event(st, t, ev, chain.genesis)
    out.append([], st.take_batch())
    return list(out.state_items(b""))


def test_fold_of_a_generated_history_equals_admission(tmp_path):
    with _embedded_history(tmp_path, invalid_every=17) as chain:
        want = [(k, v) for k, v in chain.log.state_items(b"") if k != b"lk"]  # lk: the node's first log key, not folded
        kinds = {k.split(b"/")[0] for k, _ in want}
        assert {b"tip", b"bh", b"rd", b"a", b"tx", b"id", b"pv"} <= kinds
        assert _fold_from_genesis(chain) == want


def test_fold_covers_mempool_evictions_and_every_kind(chain, keys, lines):
    f, t = keys.faucet, keys.treasury
    t1, t2 = lines.tx(f, t, 5, nonce=1), lines.tx(f, t, 6, nonce=2)
    admit_ok(chain, t1, t2, lines.share())
    admit_ok(chain, lines.block([lines.tx(f, keys.oracle, 7, nonce=1)]))  # evicts t1, keeps t2
    admit_ok(chain, lines.tx(f, t, 8, nonce=3), lines.provider(f), lines.reading())
    admit_ok(chain, lines.settlement(amount=1000), lines.payout(address=t, amount=10, round_height=1))
    admit_ok(chain, lines.governance("min_stake", 5), lines.governance("max_price_per_kwh", 900),
             lines.governance("min_stake", 7))  # §8.5: the last change of a parameter is in force
    admit_ok(chain, lines.tx(t, f, 9, nonce=1), lines.tx(t, f, 9, nonce=2))
    admit_ok(chain, lines.block([t2, lines.tx(f, t, 3, nonce=3)]))  # confirms t2, evicts the pending 3
    assert chain.write_state().pending(f.address) == ()
    assert [e[0] for e in chain.write_state().pending(t.address)] == [1, 2]
    want = [(k, v) for k, v in chain.log.state_items(b"") if k != b"lk"]  # lk: the node's first log key, not folded
    assert sum(k.startswith(b"mpx/") for k, _ in want) == 2
    assert sorted(v for k, v in want if k.startswith(b"tx/")).count(b'"e"') == 2
    assert dict(want)[b"gv/min_stake"] == b"[7,3]" and dict(want)[b"gseq"] == b"3"
    assert _fold_from_genesis(chain) == want


def test_catch_up_from_genesis_in_batches_and_after_a_crash(tmp_path):
    with _embedded_history(tmp_path) as chain:
        want = [(k, v) for k, v in chain.log.state_items(b"") if k != b"lk"]  # lk: the node's first log key, not folded
        total = sum(sum(chain.log.end_offsets(t)) for t in T.EVENT_TOPICS)

        whole = FoldTarget(chain.log)
        assert catch_up(whole, chain.codec, chain.genesis) == total
        assert list(whole.state_items(b"")) == want
        assert catch_up(whole, chain.codec, chain.genesis) == 0  # nothing beyond the positions

        target = FoldTarget(chain.log, fail_after=3)
        with pytest.raises(RuntimeError):
            catch_up(target, chain.codec, chain.genesis, batch=97)
        assert 0 < sum(target.pos.values()) < total
        target.fail_after = None
        done = sum(target.pos.values())
        assert catch_up(target, chain.codec, chain.genesis, batch=97) == total - done
        assert list(target.state_items(b"")) == want
