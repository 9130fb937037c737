"""A pruned chain upgraded to code whose projection VERSION changed (ops/data/anchorupgrade.py):
the anchor held the old version's store and the records below the prune were gone, so the
projection could not be built (PRUNED) and the next prune could not anchor: retention stopped,
and the projection was lost for good. Now its anchor store is rebuilt from the prunes' archives,
equal to what the old anchor held when the fold did not change, and everything goes on."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from clitools import cli_env, ok_json
from test_prune import _cfg, _prune, cli

from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import NotReadyError, PrunedError
from ledgerlog.ops.data.anchorupgrade import upgrade_anchor
from ledgerlog.ops.devtools.histgen import make_genesis, write_genesis, write_history
from ledgerlog.ops.query.client import open_queries
from ledgerlog.ops.verify.checks import verify
from ledgerlog.projections import energy
from ledgerlog.streams.anchor import Anchor


@pytest.fixture(scope="module")
def pruned_twice(tmp_path_factory) -> dict[str, Any]:
    """A chain pruned at two heights (two archives), and what its energy queries answer."""
    root = tmp_path_factory.mktemp("upgrade")
    genesis, keys = make_genesis(43, wallets=6)
    write_genesis(root / "genesis.json", genesis)
    write_history(root / "h.jsonl", genesis, keys, events=2500, seed=43)
    data = root / "data"
    init_chain(_cfg(data), genesis)
    assert ok_json(cli(data, "ingest", str(root / "h.jsonl")))["rejected"] == 0
    tip = ok_json(cli(data, "status"))["height"]
    _prune(data, tip // 3)
    _prune(data, tip // 2)
    with open_queries(_cfg(data)) as q:
        market = q.market()
        providers = q.providers(limit=1000)
    return {"root": root, "data": data, "tip": tip, "market": market, "providers": providers}


def _copy(pruned_twice: dict[str, Any], name: str) -> Path:
    dest = pruned_twice["root"] / name
    shutil.copytree(pruned_twice["data"], dest)
    return dest


def _strip(answer: Any) -> Any:
    """An answer without its provenance (the projection's version and digest change with the code)."""
    if isinstance(answer, dict):
        return {k: _strip(v) for k, v in answer.items() if k != "provenance"}
    if isinstance(answer, list):
        return [_strip(v) for v in answer]
    return answer


def test_a_projection_whose_version_changed_is_rebuilt_from_the_archives(pruned_twice, monkeypatch):
    data = _copy(pruned_twice, "bumped")
    cfg = Config(data_dir=str(data), sync=False, fold_workers=1)
    before = Anchor.load(cfg.anchor_dir)
    assert before is not None
    monkeypatch.setattr(energy, "VERSION", energy.VERSION + 1)  # the next release's energy code
    with open_queries(cfg) as q:  # the stale live store is rebuilt blue/green, seeded from the anchor
        assert _strip(q.market()) == _strip(pruned_twice["market"])
        assert _strip(q.providers(limit=1000)) == _strip(pruned_twice["providers"])
        assert q.market()["provenance"]["version"] == energy.VERSION
    after = Anchor.load(cfg.anchor_dir)
    assert after is not None and after.height == before.height
    assert after.dir != before.dir and not Path(before.path).exists()  # a new anchor dir, switched to whole
    assert after.projections["energy"]["version"] == energy.VERSION
    # the fold did not change, so the archives folded to exactly the store the anchor held
    assert after.projections["energy"]["digest"] == before.projections["energy"]["digest"]
    assert {n: m for n, m in after.projections.items() if n != "energy"} == \
        {n: m for n, m in before.projections.items() if n != "energy"}
    with open_chain(cfg) as chain:
        assert upgrade_anchor(cfg, chain) == []  # once is enough
    _prune(data, pruned_twice["tip"] * 2 // 3)  # and retention goes on: the next anchor builds from it
    report = verify(cfg, workers=1)
    assert report["ok"], {k: v for k, v in report.items() if isinstance(v, dict) and v.get("ok") is False}


def test_the_cli_upgrades_the_anchor_of_a_pruned_chain(pruned_twice, tmp_path):
    """Through `ledgerlog reproject energy` in a process running the next release's code."""
    data = _copy(pruned_twice, "cli")
    bump = tmp_path / "bumped_ledgerlog.py"
    bump.write_text("from ledgerlog.projections import energy\nenergy.VERSION += 1\n"
                    "from ledgerlog.ops.cli import main\nmain()\n")
    import subprocess
    import sys
    out = subprocess.run([sys.executable, str(bump), "--data-dir", str(data), "reproject", "energy"],
                         capture_output=True, env=cli_env(LEDGERLOG_FOLD_WORKERS="1"), check=False)
    assert out.returncode == 0, out.stderr.decode()
    (done,) = json.loads(out.stdout)["projections"]
    assert done["swapped"] and done["version"] == energy.VERSION + 1
    assert done["digest_after"] == done["digest_before"]


def test_without_every_archive_it_says_which_records_are_missing(pruned_twice, monkeypatch):
    data = _copy(pruned_twice, "lost")
    cfg = Config(data_dir=str(data), sync=False, fold_workers=1)
    first = sorted((data / "archive").iterdir())[0]
    shutil.move(str(first), str(pruned_twice["root"] / "moved-away"))
    monkeypatch.setattr(energy, "VERSION", energy.VERSION + 1)
    with open_chain(cfg) as chain, pytest.raises(PrunedError, match=r"energy\.\w+\[\d\] from offset 0.*put every "
                                                                     r"prune's archive back"):
        upgrade_anchor(cfg, chain)
    assert Anchor.load(cfg.anchor_dir).projections["energy"]["version"] == energy.VERSION - 1  # nothing changed


def test_energy_upgrades_over_a_governance_change_below_the_prune(chain, lines, monkeypatch):
    """energy reads ledger.governance, which prunes keep whole (never archived): its anchor
    could never be upgraded once a governance change lay below the prune."""
    from conftest import admit_ok, signer_from_byte

    from ledgerlog.ops.data.prune import prune
    from ledgerlog.streams.runner import Runner

    owner = signer_from_byte(0x71)
    lines.fund(owner)
    low = chain.genesis.energy.min_stake
    admit_ok(chain, lines.provider(owner, "p1", stake=low), lines.governance("min_stake", 5 * low), lines.block())
    for _ in range(4):
        admit_ok(chain, lines.reading("p1", 1000, meter_id="meter-1"), lines.block())
    cfg = Config(data_dir=chain.config.data_dir, sync=False, fold_workers=1)
    runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir)
    try:
        prune(chain, runner, chain.write_state().tip().height - 1)
    finally:
        runner.close()
    before = Anchor.load(cfg.anchor_dir).projections["energy"]
    monkeypatch.setattr(energy, "VERSION", energy.VERSION + 1)
    assert upgrade_anchor(cfg, chain) == ["energy"]
    after = Anchor.load(cfg.anchor_dir).projections["energy"]
    assert after["digest"] == before["digest"]
    assert after["upgraded"] == {"from_version": before["version"], "from_digest": before["digest"]}


def test_what_else_lies_in_the_archive_dir_does_not_change_the_anchor(pruned_twice, monkeypatch):
    """The archives were taken on trust: a second copy of one (a prune killed after archiving,
    then one at another height) was folded twice, another chain's archive was folded in, one
    in a subdirectory (the admin prune's {"archive": "monthly"}) was not found, and a damaged or
    stray manifest stopped the node from starting."""
    data = _copy(pruned_twice, "crowded")
    archive = data / "archive"
    first, second = sorted(archive.iterdir())
    shutil.copytree(first, archive / "h0-again")  # the same records twice
    other = _copy(pruned_twice, "other-chain")
    manifest = json.loads((second / "manifest.json").read_text())
    foreign = archive / "foreign" / second.name
    shutil.copytree(second, foreign)  # another chain's (its own manifest, checksummed)
    doc = {**manifest, "chain_id": "another-chain"}
    import hashlib

    from ledgerlog.ops.data.archive import _canonical
    body = {k: v for k, v in doc.items() if k != "manifest_sha256"}
    doc["manifest_sha256"] = hashlib.sha256(_canonical(body)).hexdigest()
    (foreign / "manifest.json").write_text(json.dumps(doc))
    shutil.move(str(second), str(archive / "monthly"))  # the admin prune's own subdirectory
    (archive / "h99").mkdir()
    (archive / "h99" / "manifest.json").write_text("{damaged")
    (Path(Anchor.load(str(data / "anchor")).root) / ".upgrade-left-by-a-crash").mkdir()
    del other
    cfg = Config(data_dir=str(data), sync=False, fold_workers=1)
    before = Anchor.load(cfg.anchor_dir)
    monkeypatch.setattr(energy, "VERSION", energy.VERSION + 1)
    with open_chain(cfg) as chain:
        assert upgrade_anchor(cfg, chain) == ["energy"]
    after = Anchor.load(cfg.anchor_dir)
    assert after.projections["energy"]["digest"] == before.projections["energy"]["digest"]
    assert not [p for p in Path(after.root).iterdir() if p.name.startswith(".upgrade-")]
    report = verify(cfg, workers=1)
    notes = [n for sec in report.values() if isinstance(sec, dict) for n in sec.get("notes", [])]
    assert report["ok"] and any("rebuilt from the prunes' archives" in n for n in notes), report


def test_a_node_starts_when_the_archives_cannot_rebuild_the_anchor(pruned_twice, monkeypatch):
    """A damaged archive: the other projections serve; the one that cannot be rebuilt says why
    (and the start tries the upgrade once: it hashes every archive)."""
    from ledgerlog.ops.data import anchorupgrade
    from ledgerlog.ops.node.lifecycle import Node

    tried = []
    real = anchorupgrade.upgrade_anchor
    monkeypatch.setattr(anchorupgrade, "upgrade_anchor",  # (counted once: it calls itself again, locked)
                        lambda *a, **kw: (None if kw.get("locked") else tried.append(1)) or real(*a, **kw))

    data = _copy(pruned_twice, "damaged")
    victim = next(f for f in sorted((data / "archive").rglob("energy.readings-*.avro")) if f.stat().st_size > 100)
    victim.write_bytes(victim.read_bytes()[:100])
    monkeypatch.setattr(energy, "VERSION", energy.VERSION + 1)
    node = Node(Config(data_dir=str(data), sync=False, fold_workers=1))
    try:
        assert len(tried) == 1
        assert node.queries.status()["height"] == pruned_twice["tip"]
        with pytest.raises(NotReadyError):  # its store is an older version's, and cannot be rebuilt
            node.queries.market()
    finally:
        node.stop()


def test_an_archive_of_another_history_of_this_chain_is_refused(pruned_twice, tmp_path, monkeypatch):
    """Same genesis, another history (a data dir started again from the same genesis.json, or a
    pre-prune snapshot restored and the chain gone on differently): its archive has this chain's
    id, and it was folded into the anchor. Each archived record is checked against the leaf hash
    the log kept at the prune."""
    genesis, keys = make_genesis(43, wallets=6)  # the fixture's genesis
    write_history(tmp_path / "h.jsonl", genesis, keys, events=1500, seed=7)
    other = tmp_path / "other-life"
    init_chain(_cfg(other), genesis)
    assert ok_json(cli(other, "ingest", str(tmp_path / "h.jsonl")))["rejected"] == 0
    _prune(other, ok_json(cli(other, "status"))["height"] // 4)
    data = _copy(pruned_twice, "two-lives")
    shutil.copytree(other / "archive", data / "archive" / "earlier-life")
    cfg = Config(data_dir=str(data), sync=False, fold_workers=1)
    monkeypatch.setattr(energy, "VERSION", energy.VERSION + 1)
    with open_chain(cfg) as chain, pytest.raises(PrunedError, match=r"not the one the log pruned.*move it away"):
        upgrade_anchor(cfg, chain)
    assert Anchor.load(cfg.anchor_dir).projections["energy"]["version"] == energy.VERSION - 1


def test_a_running_node_upgrades_the_anchor_at_a_reproject(pruned_twice, monkeypatch):
    """An upgrade deferred at the start (a prune or snapshot held the lock) or failed (archives
    put back since) was never tried again while the node ran: `reproject` answered PRUNED."""
    from ledgerlog.ops.data.locks import prune_lock
    from ledgerlog.ops.node.lifecycle import Node

    data = _copy(pruned_twice, "deferred")
    cfg = Config(data_dir=str(data), sync=False, fold_workers=1)
    monkeypatch.setattr(energy, "VERSION", energy.VERSION + 1)
    with prune_lock(str(data)):
        node = Node(cfg)
    try:
        with pytest.raises(NotReadyError):
            node.queries.market()
        (done,) = node.reproject(["energy"])
        assert done["swapped"] and _strip(node.queries.market()) == _strip(pruned_twice["market"])
    finally:
        node.stop()


def test_a_prune_stopped_after_its_anchor_is_finished_after_an_upgrade(pruned_twice, monkeypatch):
    """The records between the log's prune point and an anchor whose prune stopped before its
    deletion are still in the log, with no stored leaf hash: the upgrade demanded one, failed,
    and the stopped prune (and every other) could never finish."""
    data = _copy(pruned_twice, "stopped")
    tip = pruned_twice["tip"]

    class Stopped(Exception):
        pass

    def stop_after_anchor(step: str) -> None:
        if step == "anchored":
            raise Stopped

    with pytest.raises(Stopped):
        _prune(data, tip * 2 // 3, on_step=stop_after_anchor)
    cfg = Config(data_dir=str(data), sync=False, fold_workers=1)
    before = Anchor.load(cfg.anchor_dir).projections["energy"]
    monkeypatch.setattr(energy, "VERSION", energy.VERSION + 1)
    with open_chain(cfg) as chain:
        assert upgrade_anchor(cfg, chain) == ["energy"]
    assert Anchor.load(cfg.anchor_dir).projections["energy"]["digest"] == before["digest"]
    _prune(data, tip * 2 // 3)  # the stopped prune finishes
    assert verify(cfg, workers=1)["ok"]


def test_an_unreadable_archive_file_leaves_the_query_commands_working(pruned_twice, monkeypatch):
    """An OSError (an archive file that is a directory now, a full disk under the new anchor)
    escaped the upgrade and stopped every query command, not only energy's."""
    data = _copy(pruned_twice, "unreadable")
    victim = next(iter(sorted((data / "archive").rglob("energy.readings-*.avro"))))
    victim.unlink()
    victim.mkdir()  # reading it: IsADirectoryError
    monkeypatch.setattr(energy, "VERSION", energy.VERSION + 1)
    with open_queries(Config(data_dir=str(data), sync=False, fold_workers=1)) as q:
        assert q.status()["height"] == pruned_twice["tip"]
        with pytest.raises(NotReadyError):
            q.market()
