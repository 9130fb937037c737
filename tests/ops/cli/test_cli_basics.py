"""Node facts from the command line: --version, a config file named by --config (or
LEDGERLOG_CONFIG) read instead of <data-dir>/config.toml, and status saying version and syncing."""
from __future__ import annotations

import subprocess

from clitools import LEDGERLOG, cli, cli_env, ok_json
from test_cli_errors import one_line_error

from ledgerlog import __version__


def test_version_is_printed_without_a_data_dir(tmp_path):
    proc = subprocess.run([LEDGERLOG, "--version"], capture_output=True, env=cli_env(), cwd=tmp_path, check=False)
    assert proc.returncode == 0 and proc.stdout.decode() == f"ledgerlog {__version__}\n"
    assert not (tmp_path / "data").exists()


def test_a_named_config_file_is_the_one_read(tmp_path):
    data, conf = tmp_path / "data", tmp_path / "elsewhere.toml"
    missing = cli(data, "--config", str(conf), "status")
    assert "elsewhere.toml" in one_line_error(missing, 2, "CONFIG")["error"]

    ok_json(cli(data, "--config", str(conf), "init"))
    assert conf.exists() and not (data / "config.toml").exists()  # init wrote the named file
    status = ok_json(cli(data, "--config", str(conf), "status"))
    assert status["version"] == __version__ and status["syncing"] is False and status["log_pubkey"]

    conf.write_text(conf.read_text().replace("chunk = 1000", "chunk = 0"))
    bad = cli(data, "--config", str(conf), "status")
    one_line_error(bad, 2, "CONFIG")
    from_env = cli(data, "status", env={**cli_env(), "LEDGERLOG_CONFIG": str(conf)})
    one_line_error(from_env, 2, "CONFIG")  # the environment names the same file
    ok_json(cli(data, "status"))  # without it: <data-dir>/config.toml, which does not exist


def _ids_on_the_log(data) -> set[str]:
    """Every id an event on the log is known by (block hashes, txids, body ids, given ids)."""
    from ledgerlog.engine import topics as T
    from ledgerlog.engine.chain import open_chain
    from ledgerlog.engine.config import Config
    found: set[str] = set()
    with open_chain(Config(data_dir=str(data)), read_only=True) as chain:
        for topic in T.EVENT_TOPICS:
            for p in range(len(chain.log.end_offsets(topic))):
                for rec in chain.log.scan(topic, p):
                    ev = chain.codec.decode(topic, rec.value)
                    body = ev.get("body", {})
                    found.update(str(v) for k, v in {**ev, **body}.items()
                                 if k in ("hash", "txid", "reading_id", "share_id", "rotation_id", "provider_id",
                                          "settlement_id", "payout_id", "id"))
    return found


def test_ingest_ids_lists_every_admitted_line_offline_and_through_a_node(tmp_path):
    from clitools import running_node

    from ledgerlog.ops.devtools.histgen import make_genesis, write_genesis, write_history
    genesis, keys = make_genesis(5, wallets=8)
    write_genesis(str(tmp_path / "g.json"), genesis)
    stats = write_history(str(tmp_path / "h.jsonl"), genesis, keys, events=600, seed=5)
    lines = (tmp_path / "h.jsonl").read_bytes().splitlines(keepends=True)
    half = len(lines) // 2
    (tmp_path / "a.jsonl").write_bytes(b"".join(lines[:half]))
    (tmp_path / "b.jsonl").write_bytes(b"".join(lines[:half + 1] + lines[half:]))  # one line again: a duplicate
    data = tmp_path / "data"
    ok_json(cli(data, "init", "--genesis", str(tmp_path / "g.json")))

    offline = ok_json(cli(data, "ingest", "--ids", str(tmp_path / "a.jsonl")))
    assert len(offline["ids"]) == offline["accepted"] == half
    assert [x["line"] for x in offline["ids"]] == list(range(1, half + 1))
    plain = ok_json(cli(data, "ingest", str(tmp_path / "a.jsonl")))
    assert "ids" not in plain and plain["duplicates"] == half

    with running_node(data):
        through = ok_json(cli(data, "ingest", "--ids", str(tmp_path / "b.jsonl")))
    assert through["duplicates"] == half + 1 and len(through["ids"]) == through["accepted"] == len(lines) - half
    # numbered as in the file: line half+1 is new, half+2 repeats it
    assert [x["line"] for x in through["ids"]] == [half + 1, *range(half + 3, len(lines) + 2)]
    kinds = {x["kind"] for x in offline["ids"] + through["ids"]}
    assert {"block", "transaction", "share"} <= kinds, (kinds, stats)
    on_log = _ids_on_the_log(data)
    missing = [x for x in offline["ids"] + through["ids"] if x["id"] not in on_log]
    assert not missing, missing[:5]


def test_a_chain_an_older_version_made_is_upgraded_by_the_first_query(tmp_path):
    """Topics this version adds (ledger.governance) are created by the first command, even a query."""
    from ledgerlog.engine import storekeys as K
    from ledgerlog.engine.log.embedded import EmbeddedLog
    data = tmp_path / "data"
    ok_json(cli(data, "init"))
    with EmbeddedLog(str(data / "log")) as log:  # as a chain made before ledger.governance existed
        log.raw().delete(K.topic_key("ledger.governance"))
    with EmbeddedLog(str(data / "log"), read_only=True) as log:
        assert "ledger.governance" not in log.topics()
    assert ok_json(cli(data, "governance"))
    with EmbeddedLog(str(data / "log"), read_only=True) as log:
        assert "ledger.governance" in log.topics()
