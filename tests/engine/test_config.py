"""Configuration (engine/config.py): the HTTP limits and faucet knobs are ordinary settings, so a
``config.toml`` value takes effect, the ``LEDGERLOG_*`` variable overrides it, and the node's
HTTP app and faucet read them from the Config. The README's configuration table lists every key
with its variable."""
from __future__ import annotations

import os
from typing import Any

import pytest
from clitools import REPO
from fastapi.testclient import TestClient

from ledgerlog.engine.chain import init_chain
from ledgerlog.engine.config import SETTINGS, Config, env_values, load_config
from ledgerlog.engine.errors import ConfigError
from ledgerlog.engine.genesis import dev_genesis
from ledgerlog.ops.api.faucet import FaucetSettings
from ledgerlog.ops.api.limits import HttpLimits

NDJSON = {"Content-Type": "application/x-ndjson"}  # POST /v1/ingest takes this type only

ROOT = str(REPO)

#: (toml section, key, toml text, env var, env text, Config field, from the file, from the env)
CASES = [
    ("http", "max_body", "2048", "LEDGERLOG_HTTP_MAX_BODY", "4096", "http_max_body", 2048, 4096),
    ("http", "ingest_max_body", "8192", "LEDGERLOG_INGEST_MAX_BODY", "16384", "http_ingest_max_body", 8192, 16384),
    ("http", "ingest_rate", "2.5", "LEDGERLOG_INGEST_RATE", "0", "http_ingest_rate", 2.5, 0.0),
    ("http", "ingest_burst", "7", "LEDGERLOG_INGEST_BURST", "9", "http_ingest_burst", 7, 9),
    ("http", "ready_max_lag", "11", "LEDGERLOG_READY_MAX_LAG", "12", "http_ready_max_lag", 11, 12),
    ("http", "keep_alive_timeout", "2.5", "LEDGERLOG_HTTP_KEEP_ALIVE_TIMEOUT", "9", "http_keep_alive_timeout", 2.5, 9.0),
    ("http", "max_connections", "50", "LEDGERLOG_HTTP_MAX_CONNECTIONS", "0", "http_max_connections", 50, 0),
    ("http", "header_timeout", "3", "LEDGERLOG_HTTP_HEADER_TIMEOUT", "4.5", "http_header_timeout", 3.0, 4.5),
    ("http", "body_timeout", "30", "LEDGERLOG_HTTP_BODY_TIMEOUT", "90", "http_body_timeout", 30.0, 90.0),
    ("http", "send_timeout", "20", "LEDGERLOG_HTTP_SEND_TIMEOUT", "45", "http_send_timeout", 20.0, 45.0),
    ("http", "allowed_origins", '"https://a.example"', "LEDGERLOG_HTTP_ALLOWED_ORIGINS", "https://b.example",
     "http_allowed_origins", "https://a.example", "https://b.example"),
    ("http", "allowed_hosts", '"a.example"', "LEDGERLOG_HTTP_ALLOWED_HOSTS", "b.example,c.example",
     "http_allowed_hosts", "a.example", "b.example,c.example"),
    ("faucet", "enabled", "false", "LEDGERLOG_FAUCET_ENABLED", "yes", "faucet_enabled", False, True),
    ("faucet", "amount", "123", "LEDGERLOG_FAUCET_AMOUNT", "456", "faucet_amount", 123, 456),
    ("faucet", "key", '"/k/a.key"', "LEDGERLOG_FAUCET_KEY", "/k/b.key", "faucet_key", "/k/a.key", "/k/b.key"),
    ("faucet", "topup_key", '"/k/t.key"', "LEDGERLOG_FAUCET_TOPUP_KEY", "/k/u.key", "faucet_topup_key",
     "/k/t.key", "/k/u.key"),
    ("faucet", "ip_burst", "3", "LEDGERLOG_FAUCET_IP_BURST", "4", "faucet_ip_burst", 3, 4),
    ("faucet", "ip_interval", "30", "LEDGERLOG_FAUCET_IP_INTERVAL", "0.5", "faucet_ip_interval", 30.0, 0.5),
    ("faucet", "address_burst", "2", "LEDGERLOG_FAUCET_ADDRESS_BURST", "5", "faucet_address_burst", 2, 5),
    ("faucet", "address_interval", "60", "LEDGERLOG_FAUCET_ADDRESS_INTERVAL", "1_800", "faucet_address_interval",
     60.0, 1800.0),
]


def _write(data: Any, sections: dict[str, dict[str, str]]) -> str:
    os.makedirs(data, exist_ok=True)
    text = "".join(f"[{sec}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) for sec, kv in sections.items())
    with open(os.path.join(data, "config.toml"), "w", encoding="utf-8") as f:
        f.write(text)
    return str(data)


@pytest.mark.parametrize("sec,key,toml,var,env,attr,from_file,from_env", CASES, ids=[f"{c[0]}.{c[1]}" for c in CASES])
def test_file_then_env(tmp_path, sec, key, toml, var, env, attr, from_file, from_env):
    default = getattr(Config(), attr)
    assert from_file != default and from_env != from_file
    data = _write(tmp_path / "data", {sec: {key: toml}})
    assert getattr(load_config(data, {}), attr) == from_file            # the file takes effect
    assert getattr(load_config(data, {var: env}), attr) == from_env     # the env overrides it
    assert getattr(load_config(data, {var: ""}), attr) == from_file     # an empty variable does not
    assert getattr(load_config(str(tmp_path / "none"), {var: env}), attr) == from_env  # env alone
    assert getattr(load_config(str(tmp_path / "none"), {}), attr) == default
    assert env_values({var: env}) == {attr: from_env}


def test_every_http_and_faucet_setting_is_covered():
    knobs = {k for k, *_ in SETTINGS if k.startswith("faucet.")} | {
        k for k, *_ in SETTINGS if k.startswith("http.") and k not in ("http.host", "http.port")}
    assert knobs == {f"{c[0]}.{c[1]}" for c in CASES}


def test_objects_take_their_values_from_the_config():
    cfg = Config(http_max_body=10, http_ingest_max_body=20, http_ingest_rate=0.5, http_ingest_burst=3,
                 http_ready_max_lag=4, faucet_enabled=False, faucet_amount=5, faucet_key="/a", faucet_topup_key="/b",
                 faucet_ip_burst=6, faucet_ip_interval=7.0, faucet_address_burst=8, faucet_address_interval=9.0)
    assert HttpLimits.from_config(cfg) == HttpLimits(10, 20, 0.5, 3, 4)
    assert FaucetSettings.from_config(cfg) == FaucetSettings(False, 5, "/a", "/b", 6, 7.0, 8, 9.0)
    assert HttpLimits.from_config(Config()) == HttpLimits()          # same defaults both ways
    assert FaucetSettings.from_config(Config()) == FaucetSettings()
    assert HttpLimits.from_env({"LEDGERLOG_INGEST_BURST": "2"}) == HttpLimits(ingest_burst=2)
    assert FaucetSettings.from_env({"LEDGERLOG_FAUCET_AMOUNT": "3"}) == FaucetSettings(amount=3)


@pytest.mark.parametrize("env", [{"LEDGERLOG_INGEST_RATE": "fast"}, {"LEDGERLOG_HTTP_MAX_BODY": "1.5"},
                                 {"LEDGERLOG_FAUCET_ENABLED": "maybe"}, {"LEDGERLOG_FAUCET_IP_INTERVAL": "nan"},
                                 {"LEDGERLOG_FAUCET_AMOUNT": "many"}, {"LEDGERLOG_INGEST_BURST": "2.5"}])
def test_bad_values_are_refused_naming_the_variable(tmp_path, env):
    with pytest.raises(ConfigError) as exc:
        load_config(str(tmp_path), env)
    var = next(iter(env))
    key = next(k for k, v, *_ in SETTINGS if v == var)
    assert var in str(exc.value) or key in str(exc.value)


def test_bad_file_value_names_the_key(tmp_path):
    data = _write(tmp_path / "data", {"http": {"ingest_rate": '"often"'}})
    with pytest.raises(ConfigError, match=r"\[http\] ingest_rate"):
        load_config(data, {})


def test_init_writes_every_key_and_reads_it_back(tmp_path):
    cfg = Config(data_dir=str(tmp_path / "data"), sync=False, admin_token="x" * 16, http_ingest_rate=1.5,
                 faucet_amount=77, faucet_key="/keys/f.key")
    init_chain(cfg, dev_genesis(cfg.keys_dir))
    with open(cfg.config_path, encoding="utf-8") as f:
        text = f.read()
    assert "[faucet]" in text and "ingest_rate = 1.5" in text
    back = load_config(cfg.data_dir, {})
    for _key, _var, attr, _typ, _doc in SETTINGS:
        if attr not in ("verify_workers", "fold_workers"):  # 0 becomes the core count on load
            assert getattr(back, attr) == getattr(cfg, attr), attr


def test_readme_lists_every_key_with_its_variable():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    table = text[text.index("## Configuration"):]
    table = table[:table.index("\n## ", 5)]
    rows = [ln for ln in table.splitlines() if ln.startswith("| `")]
    for key, var, *_ in SETTINGS:
        assert any(f"`{key}`" in r.split("|")[1] and f"`{var}`" in r.split("|")[2] for r in rows), key


# -- the node's app and faucet use the Config -----------------------------------------------------
@pytest.fixture
def node_with(tmp_path):
    made: list[Any] = []

    def make(sections: dict[str, dict[str, str]], env: dict[str, str] | None = None) -> Any:
        from ledgerlog.ops.node.lifecycle import Node
        data = str(tmp_path / f"data{len(made)}")
        _write(data, sections)
        cfg = load_config(data, {"LEDGERLOG_LOG_SYNC": "0", **(env or {})})
        init_chain(cfg, dev_genesis(cfg.keys_dir))
        n = Node(cfg)
        made.append(n)
        return n

    yield make
    for n in made:
        n.stop()


def test_app_limits_come_from_config_toml_and_env(node_with):
    from ledgerlog.ops.api.app import create_app
    node = node_with({"http": {"max_body": "100", "ready_max_lag": "3"}})
    with TestClient(create_app(node)) as c:
        r = c.post("/v1/faucet", content=b"{" + b" " * 200 + b"}", headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["code"] == "TOO_LARGE"
        assert c.get("/v1/ready").json()["max_lag"] == 3
    node = node_with({"http": {"max_body": "100"}}, {"LEDGERLOG_HTTP_MAX_BODY": "100000",
                                                    "LEDGERLOG_INGEST_RATE": "0.001", "LEDGERLOG_INGEST_BURST": "1"})
    with TestClient(create_app(node)) as c:
        r = c.post("/v1/faucet", content=b"{" + b" " * 200 + b"}", headers={"content-type": "application/json"})
        assert r.status_code == 400  # under the env's cap: the body reaches validation
        assert c.post("/v1/ingest", content=b"", headers=NDJSON).status_code == 200
        r = c.post("/v1/ingest", content=b"", headers=NDJSON)
        assert r.status_code == 429 and r.json()["code"] == "RATE_LIMITED" and "retry-after" in r.headers


def test_faucet_settings_come_from_config_toml_and_env(node_with):
    from ledgerlog.ops.api.app import create_app
    node = node_with({"faucet": {"amount": "1234", "ip_burst": "2", "address_interval": "10"}},
                     {"LEDGERLOG_FAUCET_IP_BURST": "9"})
    with TestClient(create_app(node)) as c:
        st = c.get("/v1/faucet").json()
    assert st["amount"] == 1234 and st["enabled"] is True
    assert st["limits"] == {"ip_burst": 9, "ip_interval_seconds": 60.0, "address_burst": 1,
                            "address_interval_seconds": 10.0}
    node = node_with({"faucet": {"enabled": "false"}})
    with TestClient(create_app(node)) as c:
        assert c.get("/v1/faucet").json()["enabled"] is False
        r = c.post("/v1/faucet", json={"address": "ab" * 20})
        assert r.status_code == 503 and r.json()["code"] == "FAUCET_DISABLED"


@pytest.mark.parametrize("text,says", [
    ("[ingest]\nchunk = inf\n", "ingest] chunk"),                  # OverflowError: INTERNAL
    ("[ingest]\nchunk = 1.7\n", "ingest] chunk"),                  # truncated to 1
    ("[http]\nport = 8080.5\n", "http] port"),                     # truncated to 8080
    ("retention = 5\n", "retention"),                              # TypeError: INTERNAL
    ("[snapshots]\nevery = \"6h\"\n", "snapshot"),                 # ignored: no backups, ever
    ("[snapshot]\nevry = \"6h\"\n", "every"),                      # ignored
    ("[heads]\ninterval = 0.0\n", "heads.interval"),               # a core spinning
    ("[heads]\ninterval = 1e10\n", "heads.interval"),              # the heads thread died
    ("[retention]\ninterval = 1e-9\n", "retention.interval"),      # a core spinning
    ("[http]\nmax_connections = -1\n", "http.max_connections"),    # every request 503
    ("[http]\nmax_body = -1\n", "http.max_body"),                  # every POST 413
    ("[faucet]\namount = 0\n", "faucet.amount"),                   # every grant refused
    ("[http]\nheader_timeout = -1\n", "http.header_timeout"),      # slowloris protection off, silently
    ("[node]\nlog_backups = 0\n", "node.log_backups"),             # node.log never rotated, grows for ever
    ("[rocksdb]\nmax_open_files = 99999999999\n", "rocksdb.max_open_files"),  # STORAGE_ERROR at open
    ("[admin]\ntoken = \"t0ken\"\n", "admin.token"),                # guessed in a few tries: no limit
])
def test_settings_out_of_range_or_unknown_are_one_line_config_errors(tmp_path, text, says):
    """Each was accepted, truncated, ignored or an INTERNAL error, and then hung, spun, stopped a
    thread or served nothing; now a CONFIG error naming the setting, before anything runs."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=says.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")):
        load_config(str(data), {})


def test_init_writes_strings_toml_can_read_back_and_worker_counts_unresolved(tmp_path):
    """A token with a quote or a backslash made config.toml unreadable (every command failed
    after init), a Windows-style path lost its backslashes; the resolved worker counts (this
    machine's cores) were written where 0 (one per core, wherever it runs) was meant."""
    cfg = Config(data_dir=str(tmp_path / "data"), admin_token='s3cr\\et"token-1234', snapshot_dir="C:\\backups\\n1")
    init_chain(cfg, dev_genesis(cfg.keys_dir))
    back = load_config(cfg.data_dir, {})
    assert back.admin_token == 's3cr\\et"token-1234' and back.snapshot_dir == "C:\\backups\\n1"
    import tomllib
    with open(os.path.join(cfg.data_dir, "config.toml"), "rb") as f:
        doc = tomllib.load(f)
    assert doc["ingest"]["verify_workers"] == 0 and doc["fold"]["workers"] == 0


def test_an_admin_token_is_long_or_absent_from_every_source(tmp_path):
    """The admin API takes unlimited tries: a short token from the file or the environment is
    refused at start; none (admin off) and one of 16 characters are taken."""
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(ConfigError, match=r"admin\.token must be at least 16 characters.*token_urlsafe"):
        load_config(str(data), {"LEDGERLOG_ADMIN_TOKEN": " fifteen-chars!! "})
    assert load_config(str(data), {}).admin_token == ""
    assert load_config(str(data), {"LEDGERLOG_ADMIN_TOKEN": "x" * 16}).admin_token == "x" * 16


@pytest.mark.parametrize("token", ["pässwörd-sixteen-chars", "tab\tinside-sixteen-ch", "nul\x00inside-sixteen-c"])
def test_an_admin_token_no_request_can_carry_is_refused_at_start(tmp_path, token):
    """A token with "ä" never matched what a client sent (the header is read as latin-1, the
    token compared as UTF-8), so admin was off without a word; control characters neither."""
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(ConfigError, match=r"admin\.token must be printable ASCII"):
        load_config(str(data), {"LEDGERLOG_ADMIN_TOKEN": token})
    passphrase = "correct horse battery staple"  # spaces inside: a header carries them
    assert load_config(str(data), {"LEDGERLOG_ADMIN_TOKEN": passphrase}).admin_token == passphrase


def test_every_origin_cannot_be_allowed_at_once(tmp_path):
    """"*" read as a literal origin by the node's own checks, and as every origin by the CORS
    layer: refused, so an operator lists the sites."""
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(ConfigError, match=r"http\.allowed_origins must list"):
        load_config(str(data), {"LEDGERLOG_HTTP_ALLOWED_ORIGINS": "https://a.example, *"})
