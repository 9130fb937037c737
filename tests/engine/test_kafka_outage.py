"""A broker outage during ingest on a Kafka chain: while the path to the broker is cut, ingest
fails with a clear error (non-zero exit); after it is restored, re-running the ingest admits the
rest. In the end every line is admitted exactly once and the log holds no record twice.

The broker is a dedicated Tansu whose advertised listener is the proxy's address (else clients
would learn the broker's own address from the metadata and bypass the proxy)."""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from clitools import LEDGERLOG, cli_env
from kafka_broker import tansu_or_skip
from tcp_proxy import TcpProxy

from ledgerlog.engine import topics as T
from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import LogError
from ledgerlog.ops.devtools.histgen import generate, make_genesis
from ledgerlog.ops.devtools.tansu import free_port, tansu

pytestmark = pytest.mark.kafka

EVENTS = 6000
SEED = 53
CUT_SECONDS = 8.0
TIMEOUT_MS = "5000"


@pytest.fixture
def proxied_broker(tmp_path) -> Iterator[tuple[str, TcpProxy]]:
    """(bootstrap through the proxy, the proxy) of a Tansu broker started for this test."""
    tansu_or_skip()
    broker_port = free_port()
    proxy = TcpProxy(("127.0.0.1", broker_port))
    try:
        with tansu(tmp_path / "broker.log", port=broker_port, advertised_port=proxy.port, grace=0):
            yield f"127.0.0.1:{proxy.port}", proxy
    except LogError as exc:
        pytest.fail(f"broker did not start: {exc}")
    finally:
        proxy.close()


def _ingest(data: Any, path: Any, timeout: float = 240) -> subprocess.Popen:
    return subprocess.Popen([LEDGERLOG, "--data-dir", str(data), "ingest", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())


def _finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, dict[str, Any] | None, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"ingest did not end within {timeout}s: {err[-3000:]!r}")
    try:
        summary = json.loads(out) if out.strip() else None
    except ValueError:
        summary = None
    return proc.returncode, summary, err.decode(errors="replace")


# what a chain stalled by a partly visible aborted chunk rejects after it: its transactions' nonces
# are behind, so its block fails, then every later block (BAD_HEIGHT), their transactions and the
# pool's payouts for rounds that are now no block of the chain (BAD_ROUND)
_ABORTED_VISIBLE_CODES = {"BAD_NONCE", "BAD_HEIGHT", "BAD_PREV_HASH", "BAD_TIMESTAMP", "INSUFFICIENT_FUNDS",
                          "BAD_ROUND"}


def _stalled_by_an_aborted_chunk(rejections: list[dict[str, Any]]) -> bool:
    """The re-run's rejections are the cascade of a chain that stopped at one height: only the
    codes above, and every BAD_HEIGHT expects the same height."""
    expected = {r["message"].rsplit("expected ", 1)[-1] for r in rejections if r["code"] == "BAD_HEIGHT"}
    return {r["code"] for r in rejections} <= _ABORTED_VISIBLE_CODES and len(expected) <= 1


def _assert_no_record_twice(cfg: Config) -> dict[str, int]:
    """No txid, block height or mempool entry twice on the log; returns records per topic."""
    with open_chain(cfg, read_only=True) as chain:
        n = chain.log.partition_count(T.TRANSACTIONS)
        txids = Counter(chain.codec.decode(T.TRANSACTIONS, r.value)["txid"]
                        for p in range(n) for r in chain.log.scan(T.TRANSACTIONS, p))
        heights = Counter(chain.codec.decode(T.BLOCKS, r.value)["header"]["height"]
                          for r in chain.log.scan(T.BLOCKS, 0))
        mempool = Counter(chain.codec.decode(T.MEMPOOL, r.value)["txid"]
                          for p in range(chain.log.partition_count(T.MEMPOOL))
                          for r in chain.log.scan(T.MEMPOOL, p))
        counts = {t: sum(sum(1 for _ in chain.log.scan(t, p)) for p in range(chain.log.partition_count(t)))
                  for t in T.EVENT_TOPICS}
    assert max(txids.values(), default=1) == 1 and max(heights.values(), default=1) == 1
    assert max(mempool.values(), default=1) == 1
    return counts


def test_ingest_through_a_broker_outage(tmp_path, proxied_broker):
    bootstrap, proxy = proxied_broker
    genesis, keys = make_genesis(SEED, wallets=12)
    lines = list(generate(genesis, keys, events=EVENTS, seed=SEED))
    hist = tmp_path / "h.jsonl"
    hist.write_bytes(b"\n".join(lines) + b"\n")

    # the reference: the same lines on the embedded log
    ref_cfg = Config(data_dir=str(tmp_path / "ref"), sync=False, ingest_chunk=100)
    init_chain(ref_cfg, genesis)
    with open_chain(ref_cfg) as chain:
        ref = chain.admitter.admit(lines).to_dict()
        ref_tip = chain.status()
    assert ref["rejected"] == 0 and ref["accepted"] > 1000

    data = tmp_path / "data"
    cfg = Config(data_dir=str(data), log_url=f"kafka://{bootstrap}", sync=False, ingest_chunk=100,
                 kafka={"ledgerlog.topic_prefix": f"out-{uuid.uuid4().hex[:8]}.", "ledgerlog.timeout.ms": TIMEOUT_MS})
    init_chain(cfg, genesis)

    # 1. ingest; cut the path once records flow; the ingest fails clearly while it is gone
    start_bytes = proxy.bytes_up
    first = _ingest(data, hist)
    deadline = time.monotonic() + 120
    while proxy.bytes_up - start_bytes < 200_000 and first.poll() is None:
        assert time.monotonic() < deadline, "the ingest sent nothing to the broker"
        time.sleep(0.02)
    proxy.cut()
    cut_at = time.monotonic()
    try:
        code, summary, err = _finish(first, timeout=120)
        failed_within = time.monotonic() - cut_at
    finally:
        if time.monotonic() - cut_at < CUT_SECONDS:
            time.sleep(CUT_SECONDS - (time.monotonic() - cut_at))
        proxy.restore()
    assert code != 0, f"the ingest did not notice the outage: {summary}"
    assert summary is None or summary["accepted"] < ref["accepted"]
    assert err.strip(), "no error message"
    msg = json.loads(err.strip().splitlines()[-1])
    assert "kafka" in msg["error"].lower() or "broker" in msg["error"].lower(), msg
    assert failed_within < 90

    # 2. after the restore, re-running admits the rest (bounded retries: the broker may still be
    #    settling its transactions)
    runs: list[dict[str, Any]] = []
    for _attempt in range(5):
        code, summary, err = _finish(_ingest(data, hist))
        if code in (0, 1) and summary is not None:  # it ran to the end (1: something rejected)
            runs.append(summary)
            break
        if "the log and the state disagree" in err:
            # the same Tansu defect seen from the other side: part of an aborted transaction is
            # visible (e.g. a reading without the registration that was in the same chunk)
            pytest.xfail("the broker kept part of an aborted transaction visible (Tansu 0.6)")
        time.sleep(2)
    else:
        pytest.fail(f"ingest kept failing after the restore: {code} {json.dumps(summary)[:3000]} {err[-3000:]}")
    rest = runs[-1]
    if rest["rejected"] and _stalled_by_an_aborted_chunk(rest["rejections"]):
        # Tansu 0.6 keeps an aborted transaction's records visible to read_committed readers: a
        # cut after part of a chunk's transaction reached the broker leaves that part on the log,
        # so the rest of its lines no longer fit. Nothing may be duplicated even then.
        _assert_no_record_twice(cfg)
        pytest.xfail("the broker kept an aborted transaction visible (Tansu 0.6; real Kafka hides it)")
    assert rest["rejected"] == 0, rest["rejections"][:10]
    assert rest["accepted"] + rest["duplicates"] == len(lines)
    assert rest["duplicates"] > 0, "the first run admitted nothing before the cut"
    # everything is there exactly once: a third run finds only duplicates
    code, again, err = _finish(_ingest(data, hist))
    assert code == 0, err
    assert again["accepted"] == 0 and again["duplicates"] == ref["accepted"] + ref["duplicates"]

    # 3. the log has no record twice, and the chain is the reference's
    counts = _assert_no_record_twice(cfg)
    with open_chain(ref_cfg, read_only=True) as chain:
        ref_counts = {t: sum(chain.log.end_offsets(t)) for t in T.EVENT_TOPICS}
    differ = {t for t in ref_counts if counts.get(t) != ref_counts[t]}
    if differ == {T.MEMPOOL} and counts[T.MEMPOOL] < ref_counts[T.MEMPOOL]:
        # the same Tansu 0.6 defect once more: the cut chunk's transaction was aborted but its
        # block stayed visible without the chunk's mempool records, so the re-run found those
        # submissions already confirmed (DUPLICATE). Nothing is twice (checked above).
        pytest.xfail("the broker kept part of an aborted transaction visible (Tansu 0.6; real Kafka hides it)")
    assert counts == ref_counts
    with open_chain(cfg) as chain:  # log_pubkey: each data dir's own log key (PROTOCOL.md §9)
        assert {k: v for k, v in chain.status().items() if k != "log_pubkey"} == \
            {k: v for k, v in ref_tip.items() if k != "log_pubkey"}
