"""`ledgerlog prune` (ops/data/prune.py) on one history pruned and not: every query at or above the
prune height, `verify` and `reproject` answer as before; queries below it answer PRUNED; the
archive reads back equal to the pruned records and its checksums verify; proofs of pruned and kept
leaves verify against the published heads; audit passes with the archive, counts the prefix as not
audited without it, and fails on a tampered archive; heights are checked; tail and export below
the log start say so; a prune killed at each step leaves a chain that opens and serves, and the
same command finishes it."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import clitools
import fastavro
import pytest
from clitools import REPO, cli_env, ok_json

from ledgerlog.engine import topics as T
from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import PrunedError, PruneHeightError
from ledgerlog.engine.logtree import has_tree, leaf_of
from ledgerlog.engine.merkle import verify_consistency, verify_inclusion
from ledgerlog.engine.prunepoint import PRUNED_TOPICS
from ledgerlog.ops.data.archive import verify_archive
from ledgerlog.ops.data.export import iter_events
from ledgerlog.ops.data.prune import STEPS, prune
from ledgerlog.ops.devtools.histgen import make_genesis, write_genesis, write_history
from ledgerlog.ops.query.client import open_queries
from ledgerlog.streams.anchor import Anchor
from ledgerlog.streams.runner import Runner

SEED = 41
EVENTS = 2500


def _env() -> dict[str, str]:
    """cli_env() with this checkout first on PYTHONPATH (the killed prunes run ``python -c``)."""
    return cli_env(PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def cli(data_dir: Any, *args: str) -> subprocess.CompletedProcess:
    return clitools.cli(data_dir, *args, env=_env())


def _cfg(path: Path) -> Config:
    return Config(data_dir=str(path), sync=False)


def _prune(path: Path, height: int, **kw: Any) -> dict[str, Any]:
    cfg = _cfg(path)
    with open_chain(cfg) as chain:
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir)
        try:
            return prune(chain, runner, height, **kw)
        finally:
            runner.close()


@pytest.fixture(scope="module")
def chains(tmp_path_factory) -> dict[str, Any]:
    """One history in ``full`` (never pruned) and ``pruned`` (a copy pruned below ``height``),
    with the ids queries are asked about."""
    root = tmp_path_factory.mktemp("prune")
    genesis, keys = make_genesis(SEED, wallets=6)
    write_genesis(root / "genesis.json", genesis)
    write_history(root / "h.jsonl", genesis, keys, events=EVENTS, seed=SEED)
    full = root / "full"
    init_chain(_cfg(full), genesis)
    assert ok_json(cli(full, "ingest", str(root / "h.jsonl")))["rejected"] == 0
    status = ok_json(cli(full, "status"))
    tip = status["height"]
    height = tip // 2
    shutil.copytree(full, root / "pruned")
    summary = _prune(root / "pruned", height)
    ids: dict[str, Any] = {"txs": {}, "blocks": {}, "workers": set(), "providers": set(),
                           "addresses": set(genesis["allocations"])}
    for ev in iter_events(str(full), T.TRANSACTIONS):
        ids["txs"][ev.value["txid"]] = ev.height
        ids["addresses"] |= {ev.value["body"]["sender"], ev.value["body"]["recipient"]}
    for ev in iter_events(str(full), T.BLOCKS):
        ids["blocks"][ev.value["hash"]] = ev.height
    ids["workers"] = {ev.value["address"] for ev in iter_events(str(full), T.SHARES)}
    ids["providers"] = {ev.value["body"]["provider_id"] for ev in iter_events(str(full), T.PROVIDERS)}
    return {"root": root, "full": full, "pruned": root / "pruned", "tip": tip, "height": height,
            "summary": summary, "ids": ids, "pubkey": status["log_pubkey"]}


def _answers(path: Path, chains: dict[str, Any]) -> dict[str, Any]:
    """What the queries answer at and above the prune height (and that below it they refuse)."""
    h, tip, ids = chains["height"], chains["tip"], chains["ids"]
    out: dict[str, Any] = {}
    with open_queries(_cfg(path)) as q:
        st = q.status()
        st.pop("pruned")
        out["status"] = st
        for a in sorted(ids["addresses"]):
            out[f"account {a}"] = q.account(a)
            for at in (h, h + 1, (h + tip) // 2, tip):
                out[f"account {a} @{at}"] = q.account(a, at)
        for block_hash, bh in sorted(ids["blocks"].items()):
            if bh >= h:
                out[f"block {bh}"] = q.block(str(bh))
                out[f"block {block_hash}"] = q.block(block_hash)
        for txid, th in sorted(ids["txs"].items()):
            if th >= h:
                out[f"tx {txid}"] = q.tx(txid)
                out[f"proof {txid}"] = q.tx_proof(txid)
        for w in sorted(ids["workers"]):
            out[f"worker {w}"] = q.worker(w)
        for pid in sorted(ids["providers"]):
            out[f"provider {pid}"] = q.provider(pid)
        d = q.dashboard()
        out["dashboard"] = {k: d[k] for k in ("status", "richest", "pool", "workers", "energy", "providers", "log")}
        out["recent"] = [b for b in d["recent_blocks"] if b["height"] >= h]
    return out


def test_queries_at_and_above_the_prune_height_answer_as_before(chains) -> None:
    assert chains["summary"]["records"] > 0 and not chains["summary"]["noop"]
    assert _answers(chains["pruned"], chains) == _answers(chains["full"], chains)


def test_queries_below_the_prune_height_answer_pruned(chains) -> None:
    h, ids = chains["height"], chains["ids"]
    below_tx = next(t for t, th in ids["txs"].items() if th < h)
    below_block = next(b for b, bh in ids["blocks"].items() if bh < h)
    addr = sorted(ids["addresses"])[0]
    with open_queries(_cfg(chains["pruned"])) as q:
        for ask in (lambda: q.account(addr, h - 1), lambda: q.account(addr, 0), lambda: q.block(str(h - 1)),
                    lambda: q.block("1"), lambda: q.block(below_block), lambda: q.tx(below_tx),
                    lambda: q.tx_proof(below_tx)):
            with pytest.raises(PrunedError, match=f"pruned below height {h}.*archive/h{h}"):
                ask()
        assert q.status()["pruned"]["height"] == h
    with open_queries(_cfg(chains["full"])) as q:  # the same questions, unpruned: answered
        q.block(str(h - 1))
        q.tx(below_tx)
    proc = cli(chains["pruned"], "block", "1")
    assert proc.returncode == 1 and json.loads(proc.stderr)["code"] == "PRUNED"


def test_verify_and_reproject_give_the_same_digests_as_before(chains, tmp_path) -> None:
    report = ok_json(cli(chains["pruned"], "verify"))
    assert report["ok"] and report["log"]["pruned"]["height"] == chains["height"]
    assert report["projections"]["anchor"]["height"] == chains["height"]
    full = {n: v["replay_digest"] for n, v in ok_json(cli(chains["full"], "verify"))["projections"]["projections"].items()}
    assert {n: v["replay_digest"] for n, v in report["projections"]["projections"].items()} == full
    copy = tmp_path / "copy"
    shutil.copytree(chains["pruned"], copy)
    rebuilt = ok_json(cli(copy, "reproject"))["projections"]
    assert all(p["identical"] for p in rebuilt) and {p["projection"]: p["digest_after"] for p in rebuilt} == full
    shutil.rmtree(copy / "projections")  # deleted by hand: the next open starts them from the anchor
    assert ok_json(cli(copy, "status"))["provenance"]["digest"] == full["chainstate"]


def test_verify_names_a_missing_anchor_store_in_its_report(chains, tmp_path) -> None:
    """A damaged or missing anchor store stopped verify with a bare one-line error (exit 2 for a
    missing one, as if the command were misused) and no report; it is a problem named in it."""
    copy = tmp_path / "pruned"
    shutil.copytree(chains["pruned"], copy)
    anchor = Anchor.load(str(copy / "anchor"))
    assert anchor is not None
    shutil.rmtree(anchor.store_path("energy"))
    proc = cli(copy, "verify")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    problems = [p for sec in ("log", "projections") for p in report[sec]["problems"]]
    assert any(p["code"] == "ANCHOR_DAMAGED" and p["where"] == "anchor energy" for p in problems), problems


@pytest.mark.parametrize("how", ["anchor.json", "store positions"])
def test_verify_finds_an_anchor_moved_off_the_prune_point(chains, tmp_path, how) -> None:
    """anchor.json's height and positions, and each anchor store's own positions, were never
    checked: one moved off the prune point passed verify (and a store's moved positions were
    blamed on the live store, whose suggested reproject then served the anchor's state)."""
    from ledgerlog.engine import storekeys as K
    from ledgerlog.engine.rocks import open_store

    copy = tmp_path / "pruned"
    shutil.copytree(chains["pruned"], copy)
    anchor = Anchor.load(str(copy / "anchor"))
    assert anchor is not None
    if how == "anchor.json":
        path = os.path.join(anchor.path, "anchor.json")
        doc = json.loads(open(path).read())
        doc["height"] += 1
        open(path, "w").write(json.dumps(doc))
    else:
        db = open_store(anchor.store_path("balances"), K.PROJECTION_FORMAT)
        key = K.pos_key(T.TRANSACTIONS, 0)
        db.put(key, K.U64.pack(K.U64.unpack(db.get(key))[0] + 7))
        db.close()
    proc = cli(copy, "verify")
    assert proc.returncode == 1, proc.stderr
    problems = json.loads(proc.stdout)["projections"]["problems"]
    want = "anchor" if how == "anchor.json" else "anchor balances"
    assert ("ANCHOR_MISMATCH", want) in [(p["code"], p["where"]) for p in problems], problems


def test_verify_finds_an_anchor_rewritten_with_its_digest(chains, tmp_path) -> None:
    """An anchor store changed and its digest in anchor.json changed to match passed the anchor's
    own checks (the errors landed on the live store, whose reproject would serve the change): the
    prune records each anchor digest on the log, and verify holds anchor.json to it."""
    from ledgerlog.engine import storekeys as K
    from ledgerlog.engine.rocks import open_store
    from ledgerlog.ops.verify.checks import _content_digest
    from ledgerlog.streams.store import ProjectionStore

    copy = tmp_path / "pruned"
    shutil.copytree(chains["pruned"], copy)
    anchor = Anchor.load(str(copy / "anchor"))
    assert anchor is not None
    db = open_store(anchor.store_path("balances"), K.PROJECTION_FORMAT)
    key = next(k for k, _v in db.items() if k.startswith(b"a/"))
    db.put(key, db.get(key).replace(b"[", b"[1", 1))
    db.close()
    store = ProjectionStore(anchor.store_path("balances"), read_only=True)
    try:
        content, _n = _content_digest(store.db)
    finally:
        store.close()
    path = os.path.join(anchor.path, "anchor.json")
    doc = json.loads(open(path).read())
    doc["projections"]["balances"]["digest"] = f"{content:032x}"
    open(path, "w").write(json.dumps(doc))
    proc = cli(copy, "verify")
    assert proc.returncode == 1, proc.stderr
    problems = json.loads(proc.stdout)["projections"]["problems"]
    assert ("ANCHOR_MISMATCH", "anchor balances") in [(p["code"], p["where"]) for p in problems], problems


def test_the_archive_holds_the_pruned_records_exactly_and_its_checksums_verify(chains, tmp_path) -> None:
    dest = chains["pruned"] / "archive" / f"h{chains['height']}"
    manifest = verify_archive(str(dest), deep=True)
    cfg = _cfg(chains["full"])
    seen = 0
    with open_chain(cfg, read_only=True) as full, open_chain(_cfg(chains["pruned"]), read_only=True) as pruned:
        for topic in PRUNED_TOPICS:
            starts = pruned.log.start_offsets(topic)
            for p, start in enumerate(starts):
                want = [(r.offset, r.timestamp, r.key, r.value) for r in full.log.scan(topic, p, 0, start)]
                name = f"{topic}-{p}.avro"
                if not want:
                    assert name not in manifest["files"]
                    continue
                with open(dest / name, "rb") as f:
                    rows = list(fastavro.reader(f))
                assert [(r["offset"], r["timestamp"], r["key"], r["value"]) for r in rows] == want
                assert all(r["topic"] == topic and r["partition"] == p and r["height"] < chains["height"] for r in rows)
                meta = manifest["files"][name]
                assert (meta["first_offset"], meta["end_offset"], meta["records"]) == (0, start, len(want))
                assert meta["sha256"] == hashlib.sha256((dest / name).read_bytes()).hexdigest()
                seen += len(want)
    assert seen == chains["summary"]["records"]
    assert ok_json(cli(chains["pruned"], "archive", "verify", str(chains["pruned"] / "archive")))["ok"]
    bad = tmp_path / "bad"
    shutil.copytree(dest, bad)
    victim = next(p for p in sorted(bad.iterdir()) if p.suffix == ".avro")
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40
    victim.write_bytes(bytes(data))
    proc = cli(chains["pruned"], "archive", "verify", str(bad))
    assert proc.returncode == 1 and json.loads(proc.stderr)["code"] == "CORRUPT" and victim.name in proc.stderr.decode()


def _heads(chain: Any) -> dict[tuple[str, int], list[dict[str, Any]]]:
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for rec in chain.log.scan(T.CHECKPOINTS, 0):
        head = chain.codec.decode(T.CHECKPOINTS, rec.value)["head"]
        out.setdefault((head["topic"], head["partition"]), []).append(head)
    return out


def test_proofs_of_pruned_and_kept_leaves_verify_against_the_published_heads(chains) -> None:
    with open_chain(_cfg(chains["pruned"]), read_only=True) as chain, \
            open_chain(_cfg(chains["full"]), read_only=True) as full:
        trees, heads = chain.log.trees, _heads(chain)
        assert trees is not None and heads
        checked = 0
        for (topic, p), hs in sorted(heads.items()):
            start = chain.log.start_offsets(topic)[p]
            for head in hs:
                n, root = head["tree_size"], bytes.fromhex(head["root_hash"])
                assert trees.root(topic, p, n) == root
                for i in {0, max(0, start - 1), min(start, n - 1), n - 1}:
                    if 0 <= i < n:
                        offset, leaf, path = trees.inclusion(topic, p, i, n)
                        verify_inclusion(i, n, leaf, path, root)
                        assert (offset, leaf, path) == full.log.trees.inclusion(topic, p, i, n)  # type: ignore[union-attr]
                        checked += 1
                last = hs[-1]
                if 0 < n <= last["tree_size"]:
                    proof = trees.consistency(topic, p, n, last["tree_size"])
                    verify_consistency(n, last["tree_size"], proof, root, bytes.fromhex(last["root_hash"]))
            if has_tree(topic) and start:
                [(off, leaf)] = trees.leaves(topic, p, 0, 1)
                first = next(iter(full.log.scan(topic, p, 0, 1)))
                assert (off, leaf) == (0, leaf_of(first.key, first.timestamp, first.value))
        assert checked > 0


def test_audit_checks_the_archive_counts_the_prefix_without_it_and_fails_on_a_tampered_one(chains, tmp_path) -> None:
    pruned, pk = chains["pruned"], chains["pubkey"]
    plain = ok_json(cli(pruned, "audit", "--log-pubkey", pk))
    assert plain["pruned"]["not_audited"] == chains["summary"]["records"] and plain["pruned"]["archived"] == 0
    with_archive = ok_json(cli(pruned, "audit", "--log-pubkey", pk, "--archive", str(pruned / "archive")))
    assert with_archive["pruned"] == {"archived": chains["summary"]["records"], "not_audited": 0}
    assert with_archive["records"] == ok_json(cli(chains["full"], "audit", "--log-pubkey", pk))["records"]
    # a record rewritten in the archive, its manifest made to match: the Merkle roots catch it
    bad = tmp_path / "archive" / f"h{chains['height']}"
    shutil.copytree(pruned / "archive" / f"h{chains['height']}", bad)
    victim = bad / f"{T.TRANSACTIONS}-0.avro"
    with open(victim, "rb") as f:
        rd = fastavro.reader(f)
        schema, meta, rows = rd.writer_schema, dict(rd.metadata), list(rd)
    rows[0]["value"] = rows[0]["value"][:-1] + bytes([rows[0]["value"][-1] ^ 1])
    with open(victim, "wb") as f:
        fastavro.writer(f, schema, rows, codec="deflate",
                        metadata={k: v for k, v in meta.items() if not k.startswith("avro.")})
    doc = json.loads((bad / "manifest.json").read_text())
    doc["files"][victim.name].update(bytes=victim.stat().st_size, sha256=hashlib.sha256(victim.read_bytes()).hexdigest())
    body = {k: v for k, v in doc.items() if k != "manifest_sha256"}
    doc["manifest_sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    (bad / "manifest.json").write_text(json.dumps(doc))
    proc = cli(pruned, "audit", "--log-pubkey", pk, "--archive", str(bad))
    assert proc.returncode == 1, proc.stdout[-2000:]
    failure = json.loads(proc.stdout)["failure"]
    assert (failure["code"], failure["topic"], failure["partition"]) == ("ROOT_MISMATCH", T.TRANSACTIONS, 0)
    # a flipped byte the manifest does not match
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40
    victim.write_bytes(bytes(data))
    proc = cli(pruned, "audit", "--log-pubkey", pk, "--archive", str(bad))
    assert proc.returncode == 1 and json.loads(proc.stdout)["failure"]["code"] == "ARCHIVE_CORRUPT"


def test_prune_heights_are_checked_and_the_same_height_is_a_noop(chains, tmp_path) -> None:
    h, tip = chains["height"], chains["tip"]
    for bad in (0, h - 1, tip + 1):
        with pytest.raises(PruneHeightError):
            _prune(chains["pruned"], bad)
    proc = cli(chains["pruned"], "prune", "--before-height", str(tip + 1))
    assert proc.returncode == 2 and json.loads(proc.stderr)["code"] == "BAD_PRUNE_HEIGHT"
    again = ok_json(cli(chains["pruned"], "prune", "--before-height", str(h)))
    assert again["noop"] is True


def test_a_rerun_of_a_done_prune_hands_its_point_to_the_log_again(chains, tmp_path, monkeypatch) -> None:
    """The point is recorded before the deletion, so a deletion that failed after it (Kafka's
    DeleteRecords and a broker timeout) left a prune that looks done: the rerun deletes again
    (idempotent) instead of reporting a noop over records still on the broker."""
    from ledgerlog.engine.log.embedded import EmbeddedLog
    victim = tmp_path / "data"
    shutil.copytree(chains["pruned"], victim)
    calls: list[Any] = []
    real = EmbeddedLog.prune

    def spy(self, point, progress=None):
        calls.append(point)
        return real(self, point, progress)
    monkeypatch.setattr(EmbeddedLog, "prune", spy)
    again = _prune(victim, chains["height"])
    assert again["noop"] is True
    assert [p.height for p in calls] == [chains["height"]]


def test_an_archive_of_another_chain_is_not_taken_for_this_one(chains, tmp_path) -> None:
    """A prune run again keeps the archive it wrote; one another chain wrote at the same height and
    ranges (two chains sharing retention.archive_dir) is refused, not counted as this one's."""
    from ledgerlog.engine.errors import UsageError
    from ledgerlog.ops.data.archive import write_archive
    cfg = _cfg(chains["full"])
    dest = str(tmp_path / "h5")
    with open_chain(cfg, read_only=True) as chain:
        ranges = {(T.BLOCKS, 0): (0, 5)}
        kw = {"height": 5, "chain_id": chain.genesis.chain_id, "genesis_hash": chain.genesis.hash}
        first = write_archive(chain.log, chain.codec, dest, ranges, **kw)
        assert write_archive(chain.log, chain.codec, dest, ranges, **kw) == first  # the rerun keeps it
        with pytest.raises(UsageError, match="another archive"):
            write_archive(chain.log, chain.codec, dest, ranges, **{**kw, "genesis_hash": "ab" * 32})


def test_a_prune_past_a_stopped_projection_is_refused_and_deletes_nothing(chains, tmp_path, monkeypatch) -> None:
    """A projection whose fold failed has stopped below the records a prune would delete: the prune
    is refused (retention tries again later) rather than strand it (its store would be behind the
    log's start, and the node refuse to open it)."""
    from ledgerlog.engine.errors import ProjectionFailedError
    from ledgerlog.streams import catalog
    victim = tmp_path / "data"
    shutil.copytree(chains["full"], victim)
    module = tmp_path / "fragile.py"  # a user projection (the anchor, of the built-ins, does not hold it)
    module.write_text("NAME, VERSION, TOPICS = 'fragile', 1, ('ledger.blocks',)\n"
                      "def fold(genesis, events, txn):\n"
                      "    raise RuntimeError('a bug')\n")
    with open(catalog.registry_path(_cfg(victim).projections_dir), "w") as f:
        json.dump({"projections": {"fragile": {"file": str(module)}}}, f)
    with pytest.raises(ProjectionFailedError, match="fragile"):
        _prune(victim, chains["height"])
    cfg = _cfg(victim)
    with open_chain(cfg, read_only=True) as chain:
        assert chain.log.prune_point() is None and min(chain.log.start_offsets(T.BLOCKS)) == 0


def test_tail_and_export_below_the_log_start_say_pruned(chains, tmp_path) -> None:
    pruned, h = chains["pruned"], chains["height"]
    proc = cli(pruned, "tail", T.BLOCKS, "--from-offset", "0", "--limit", "1")
    assert proc.returncode == 1 and json.loads(proc.stderr)["code"] == "PRUNED"
    said = json.loads(proc.stderr)["error"]  # the archive's real path, one a user can open (not <data_dir>/...)
    assert "<data_dir>" not in said and os.path.join(os.path.abspath(str(pruned)), "archive", f"h{h}") in said, said
    first = ok_json(cli(pruned, "tail", T.BLOCKS, "--limit", "1"))  # from the log's start
    assert first["value"]["header"]["height"] == h
    proc = cli(pruned, "export", "--topic", T.TRANSACTIONS, "--from-height", str(h - 1), "--format", "jsonl",
               "--out", str(tmp_path / "x.jsonl"))
    assert proc.returncode == 1 and json.loads(proc.stderr)["code"] == "PRUNED"
    assert not (tmp_path / "x.jsonl").exists()
    for bound in (["--to-height", str(h - 1)], ["--to-offset", "0"]):  # all it asks for is pruned: not an empty file
        proc = cli(pruned, "export", "--topic", T.BLOCKS, *bound, "--format", "jsonl", "--out", str(tmp_path / "y.jsonl"))
        assert proc.returncode == 1 and json.loads(proc.stderr)["code"] == "PRUNED", (bound, proc.stderr)
        assert not (tmp_path / "y.jsonl").exists()
    # an upper bound alone above the start: from the log's start, saying so
    got = ok_json(cli(pruned, "export", "--topic", T.BLOCKS, "--to-height", str(h + 5), "--format", "jsonl",
                      "--out", str(tmp_path / "z.jsonl")))
    heights = [json.loads(line)["height"] for line in (tmp_path / "z.jsonl").read_text().splitlines()]
    assert heights == list(range(h, h + 6)) and got["pruned"]["height"] == h
    for topic in (T.KEYS, T.GOVERNANCE, T.ADMIN):  # topics prune keeps whole: all of them is there
        kept = {name: tmp_path / f"{name}-kept.jsonl" for name in ("full", "pruned")}
        for name, out in kept.items():
            ok_json(cli(chains[name], "export", "--topic", topic, "--from-height", "0", "--format", "jsonl",
                        "--out", str(out)))
        assert kept["full"].read_bytes() == kept["pruned"].read_bytes(), topic
    outs = {}
    for name in ("full", "pruned"):
        out = tmp_path / f"{name}.jsonl"
        got = ok_json(cli(chains[name], "export", "--topic", T.TRANSACTIONS, "--from-height", str(h),
                          "--format", "jsonl", "--out", str(out)))
        outs[name] = out.read_bytes()
        assert (got["pruned"] or {}).get("height") == (h if name == "pruned" else None)
    assert outs["full"] == outs["pruned"] and outs["full"]


# -- killed at each step ------------------------------------------------------------------------

_KILL = """
import os, sys
from ledgerlog.engine.chain import open_chain
from ledgerlog.engine.config import Config
from ledgerlog.ops.data.prune import prune
from ledgerlog.streams.runner import Runner
path, height, step = sys.argv[1], int(sys.argv[2]), sys.argv[3]
armed = []
def on_step(name):
    if name == step:
        os._exit(9)
    if step == "leaves" and name == "anchored":
        armed.append(1)
class Progress:
    def __call__(self, n):
        if armed:  # the first batch of leaf hashes is stored: killed before the records are deleted
            os._exit(9)
    def set_total(self, total):
        pass
    def describe(self, phase):
        pass
progress = Progress()
cfg = Config(data_dir=path, sync=False)
chain = open_chain(cfg)
runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir)
prune(chain, runner, height, on_step=on_step, progress=progress)
"""


@pytest.mark.parametrize("step", ["leaves", *STEPS])
def test_a_prune_killed_at_each_step_leaves_a_chain_that_serves_and_the_rerun_finishes_it(chains, tmp_path, step) -> None:
    victim = tmp_path / "data"
    shutil.copytree(chains["full"], victim)
    h = chains["height"]
    proc = subprocess.run([sys.executable, "-c", _KILL, str(victim), str(h), step],
                          capture_output=True, timeout=300, env=_env())
    assert proc.returncode == 9, proc.stderr.decode()[-3000:]
    assert ok_json(cli(victim, "status"))["height"] == chains["tip"]  # it opens and serves
    want = _answers(chains["full"], chains)
    assert _answers(victim, chains) == want
    again = ok_json(cli(victim, "prune", "--before-height", str(h)))
    assert again["noop"] is (step in ("pruned", "done"))
    assert _answers(victim, chains) == want
    report = ok_json(cli(victim, "verify"))
    assert report["ok"] and report["log"]["pruned"]["height"] == h
    left = sorted(e.name for d in (victim, victim / "archive", victim / "anchor") if d.exists()
                  for e in d.iterdir() if e.name.startswith(".tmp"))
    assert left == []


def test_a_prune_below_an_interrupted_one_names_it_and_how_to_finish_it(chains, tmp_path) -> None:
    """Killed after its anchor was built, a prune leaves the log whole (status: not pruned); a
    prune below it then said "already pruned below H". It names the unfinished prune instead."""
    victim = tmp_path / "data"
    shutil.copytree(chains["full"], victim)
    h = chains["height"]
    proc = subprocess.run([sys.executable, "-c", _KILL, str(victim), str(h), "anchored"],
                          capture_output=True, timeout=300, env=_env())
    assert proc.returncode == 9, proc.stderr.decode()[-3000:]
    assert ok_json(cli(victim, "status")).get("pruned") is None
    proc = cli(victim, "prune", "--before-height", str(h - 1))
    err = json.loads(proc.stderr)
    assert proc.returncode == 2 and err["code"] == "BAD_PRUNE_HEIGHT", err
    assert "already pruned" not in err["error"] and "interrupted" in err["error"], err
    assert f"--before-height {h}" in err["error"], err
    assert ok_json(cli(victim, "prune", "--before-height", str(h)))["noop"] is False


def test_a_rebuild_left_behind_the_prune_starts_over_from_the_anchor(chains, tmp_path) -> None:
    from ledgerlog.streams import layout
    victim = tmp_path / "data"
    shutil.copytree(chains["full"], victim)
    cfg = _cfg(victim)
    with open_chain(cfg) as chain:  # a reproject of chainstate killed early: its build folded 10 blocks
        build = os.path.join(cfg.projections_dir, "chainstate", "v9-killed")
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir, names=["chainstate"],
                        paths={"chainstate": build})
        try:
            runner.catch_up(until={t: [min(e, 10) for e in chain.log.end_offsets(t)] for t in chain.log.topics()})
        finally:
            runner.close()
        layout.write_pointer(cfg.projections_dir, "chainstate", "building", "v9-killed", 2)
    proc = subprocess.run([sys.executable, "-c", _KILL, str(victim), str(chains["height"]), "pruned"],
                          capture_output=True, timeout=300, env=_env())
    assert proc.returncode == 9, proc.stderr.decode()[-3000:]
    [rebuilt] = ok_json(cli(victim, "reproject", "chainstate"))["projections"]
    assert rebuilt["identical"] and rebuilt["resumed"] is False and rebuilt["dir"] != "v9-killed"


@pytest.mark.parametrize("leftover", ["parts", "shards"])  # shards: account shards of an older ledgerlog
def test_a_split_build_killed_before_its_merge_resumes_from_the_anchor(chains, tmp_path, leftover) -> None:
    """A build dir holding only the parts of a killed split build (no store of its own) on a
    pruned log: the resumed build starts from the anchor (the parts are in its way, and a pruned
    log is never built in parts), not refused for ever because the directory is not empty."""
    from ledgerlog.streams import layout
    victim = tmp_path / "data"
    shutil.copytree(chains["pruned"], victim)
    cfg = _cfg(victim)
    part = os.path.join(cfg.projections_dir, "balances", "v9-sharded", leftover, "0-of-2")
    os.makedirs(part)
    with open(os.path.join(part, "LOG"), "w") as f:
        f.write("a part's store, killed\n")
    layout.write_pointer(cfg.projections_dir, "balances", "building", "v9-sharded", 2)
    [rebuilt] = ok_json(cli(victim, "reproject", "balances"))["projections"]
    assert rebuilt["identical"] and rebuilt["dir"] == "v9-sharded"
    assert not os.path.exists(os.path.join(cfg.projections_dir, "balances", "v9-sharded", leftover))


@pytest.mark.parametrize("command", ["prune", "snapshot"])
def test_an_archive_or_a_snapshot_is_never_written_where_the_chain_keeps_its_own(chains, tmp_path, command) -> None:
    """``prune --archive <data>/anchor`` answered with an archive path the anchor build then
    replaced (the pruned records were gone for good); a snapshot written there was deleted by
    the next prune without a word. Both are refused before anything is written or deleted."""
    victim = tmp_path / "data"
    shutil.copytree(chains["full"], victim)
    before = ok_json(cli(victim, "status"))
    for own in ("anchor", "log", "projections", "keys"):
        args = (("prune", "--before-height", str(chains["height"]), "--archive", str(victim / own))
                if command == "prune" else ("snapshot", "create", "--out", str(victim / own / "backups")))
        proc = cli(victim, *args)
        assert proc.returncode == 2, proc.stderr
        err = json.loads(proc.stderr)
        assert err["code"] == "CONFIG" and f"chain's own {own}" in err["error"], err
    after = ok_json(cli(victim, "status"))
    assert after["pruned"] == before["pruned"] is None and not (victim / "anchor").exists()
    assert not (victim / "log" / "backups").exists() and not (victim / "anchor" / "backups").exists()


def _raw_pages(q: Any, name: str) -> list[tuple[str, Any]]:
    """Every entry the raw projection routes serve of ``name``, page by page."""
    out, start = [], None
    while True:
        page = q.projection_page(name, start=start, limit=1000)
        out += [(it["key"], it) for it in page["items"]]
        if page["next"] is None:
            return out
        start = page["next"]


def test_the_raw_projection_routes_serve_no_history_from_below_the_prune(chains) -> None:
    """/v1/projections/<name>[/keys/<key>] read the stores as folded, which still hold what the
    log no longer does: block 1 whole (header, txids, signature), transactions and balance
    history below the prune height. Such entries are now left out of pages and 410 PRUNED."""
    from ledgerlog import projections
    from ledgerlog.engine.errors import PrunedError
    from ledgerlog.ops.query.userviews import key_text
    h = chains["height"]
    with open_queries(_cfg(chains["pruned"])) as q, open_queries(_cfg(chains["full"])) as full:
        for name, module in projections.ALL.items():
            served = _raw_pages(q, name)
            kept = [k for k, _ in served]
            below = [key_text(k) for k, v in full.runner.handles[name].store.view().items(b"", b"\x01")
                     if module.below(k, v, h)]
            assert served and not set(kept) & set(below), name
            if name in ("chainstate", "balances", "payouts"):  # this history has some below the prune
                assert below, name
        block1 = "hex:" + (b"b/" + (1).to_bytes(8, "big")).hex()
        with pytest.raises(PrunedError, match="below height"):
            q.projection_entry("chainstate", block1)
        assert full.projection_entry("chainstate", block1)["value"]["header"]["height"] == 1
        above = "hex:" + (b"b/" + h.to_bytes(8, "big")).hex()
        assert q.projection_entry("chainstate", above)["value"]["header"]["height"] == h
