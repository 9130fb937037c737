"""The one error table (engine/errors.py) and the two edges that answer from it.

- Every LedgerError class (those engine.errors exports and any subclass anywhere in the ledgerlog
  package) has its code, HTTP status and CLI exit code, is drawn in the module's tree, and owns
  a code no other class owns; no module defines an error outside the table.
- The CLI: every command, given a bad flag or a missing data dir, and each failure mode of the
  table below (bad args, bad genesis, a corrupt or locked store, not found, ...), prints one
  JSON line with its code and exits as the class says, with no traceback (one with --debug).
- HTTP: every route of the route table (ops/api/routes.py), given bad input (out-of-range and
  huge numbers, bad hex, unknown fields, junk bodies, wrong methods), and unknown routes, answer
  the one error shape ``{"code","message"}`` and never 5xx; new routes are covered as they are
  added to the table."""
from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from clitools import LEDGERLOG, cli_env
from fastapi.testclient import TestClient

import ledgerlog
from ledgerlog.engine import errors
from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import LedgerError, error_class_for, error_classes
from ledgerlog.engine.genesis import dev_genesis
from ledgerlog.ops.api.app import create_app
from ledgerlog.ops.api.limits import HttpLimits
from ledgerlog.ops.api.routes import ROUTES, path_params
from ledgerlog.ops.devtools.histgen import make_genesis, write_genesis, write_history
from ledgerlog.ops.node.lifecycle import Node

TIMEOUT = 120
TOKEN = "t" * 32
#: exception classes that are control flow inside one module, never raised to a user
PRIVATE_SIGNALS = {"_TailStopped", "_AppendFailed", "_TooLarge"}


def _all_modules() -> list[Any]:
    mods = []
    for info in pkgutil.walk_packages(ledgerlog.__path__, "ledgerlog."):
        if ".deploy" in info.name or ".static" in info.name:
            continue
        try:
            mods.append(importlib.import_module(info.name))
        except ImportError:  # an optional extra that is not installed (e.g. a Kafka client)
            continue
    return mods


MODULES = _all_modules()


# -- the table ------------------------------------------------------------------------------------
def _table() -> list[type[LedgerError]]:
    exported = [getattr(errors, n) for n in errors.__all__]
    classes = {c for c in exported if inspect.isclass(c) and issubclass(c, LedgerError)} | set(error_classes())
    return sorted(classes, key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", _table(), ids=lambda c: c.__name__)
def test_every_error_class_has_its_row(cls):
    assert isinstance(cls.code, str) and re.fullmatch(r"[A-Z][A-Z0-9_]*", cls.code), cls.code
    assert 400 <= cls.http_status <= 599 and cls.exit_code in (1, 2), (cls.http_status, cls.exit_code)
    assert cls.public is None or (isinstance(cls.public, str) and not re.search(r"(^|\s)/", cls.public))
    assert re.search(rf"\b{cls.__name__}\b\s+{cls.code} {cls.http_status} {cls.exit_code}\b", errors.__doc__ or ""), \
        f"{cls.__name__} is not drawn in engine/errors.py's tree with its row"
    assert error_class_for(cls.code) is not None


def test_codes_are_unique_per_meaning():
    owners: dict[str, list[str]] = {}
    for cls in _table():
        if "code" in cls.__dict__:
            owners.setdefault(cls.__dict__["code"], []).append(cls.__name__)
    assert {c: o for c, o in owners.items() if len(o) > 1} == {}


def test_everything_exported_is_in_the_table():
    for name in errors.__all__:
        obj = getattr(errors, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            assert issubclass(obj, LedgerError), name


def test_no_module_defines_an_error_outside_the_table():
    outside = sorted(f"{m.__name__}.{name}" for m in MODULES for name, obj in vars(m).items()
                     if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == m.__name__
                     and not issubclass(obj, LedgerError) and name not in PRIVATE_SIGNALS)
    assert outside == []


# -- the CLI --------------------------------------------------------------------------------------
def cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([LEDGERLOG, *args], capture_output=True, timeout=TIMEOUT, env=cli_env(), cwd=cwd,
                          stdin=subprocess.DEVNULL)


def one_line(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    """The failure a command printed: one JSON line, its code in the table (not INTERNAL), the exit
    status the code's class says, no traceback."""
    err = proc.stderr.decode(errors="replace")
    assert "Traceback" not in err and err.count("\n") == 1, err[-3000:]
    doc = json.loads(err)
    assert isinstance(doc["error"], str) and doc["error"] and doc["code"] != "INTERNAL", doc
    cls = error_class_for(doc["code"])
    assert cls is not None, doc
    assert proc.returncode == cls.exit_code, (proc.returncode, doc)
    return doc


def _commands() -> list[tuple[list[str], list[str]]]:
    """Every leaf command of the CLI: (its words, an argument for each required argument)."""
    import typer.main

    from ledgerlog.ops.cli import _register_commands, app
    _register_commands()
    out: list[tuple[list[str], list[str]]] = []

    def walk(cmd: Any, words: list[str]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in sorted(subs.items()):
                walk(sub, [*words, name])
            return
        args = ["x" for p in cmd.params if p.param_type_name == "argument" and p.required]
        out.append((words, args))

    walk(typer.main.get_command(app), [])
    return out


COMMANDS = _commands()


@pytest.mark.parametrize("words,args", COMMANDS, ids=[" ".join(w) for w, _ in COMMANDS])
def test_every_command_refuses_an_unknown_flag_in_one_line(tmp_path, words, args):
    proc = cli("--data-dir", str(tmp_path / "none"), *words, *args, "--no-such-flag")
    assert one_line(proc)["code"] == "USAGE"


@pytest.mark.parametrize("words,args", [(w, a) for w, a in COMMANDS if w not in (["run"], ["tail"])],
                         ids=[" ".join(w) for w, _ in COMMANDS if w not in (["run"], ["tail"])])
def test_every_command_on_a_missing_data_dir_fails_in_one_line_or_works(tmp_path, words, args):
    """A command that needs a chain says so in one line; one that needs none may succeed."""
    proc = cli("--data-dir", str(tmp_path / "none"), *words, *args, cwd=str(tmp_path))
    if proc.returncode != 0:
        one_line(proc)


@pytest.fixture(scope="module")
def chain_dir(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("cli")
    genesis, keys = make_genesis(3, wallets=4)
    write_genesis(str(d / "genesis.json"), genesis)
    write_history(str(d / "h.jsonl"), genesis, keys, events=60, seed=3)
    data = str(d / "data")
    assert cli("--data-dir", data, "init", "--genesis", str(d / "genesis.json")).returncode == 0
    assert cli("--data-dir", data, "ingest", str(d / "h.jsonl")).returncode in (0, 1)
    (d / "junk.json").write_text("{")
    (d / "wrong.json").write_text('{"chain_id": 5}')
    return {"dir": str(d), "data": data}


#: (case, arguments after --data-dir DATA, code); the exit status is the code's class's
CASES = [
    ("bad flag value", ["generate", "--events", "many", "--out", "h"], "USAGE"),
    ("missing argument", ["account"], "USAGE"),
    ("bad generate numbers", ["generate", "--events", "0", "--out", "h"], "USAGE"),
    ("unreadable genesis", ["init", "--genesis", "{dir}/junk.json"], "USAGE"),
    ("invalid genesis", ["init", "--genesis", "{dir}/wrong.json"], "CONFIG"),
    ("ingest of a missing file", ["ingest", "{dir}/missing.jsonl"], "USAGE"),
    ("malformed address", ["account", "zz"], "BAD_REQUEST"),
    ("height out of range", ["block", "99999999999999999999999"], "BAD_REQUEST"),
    ("no such transaction", ["tx", "ab" * 32], "NOT_FOUND"),
    ("no such block", ["block", "987654"], "NOT_FOUND"),
    ("unknown projection", ["reproject", "nope"], "USAGE"),
    ("bad export range", ["export", "--topic", "ledger.blocks", "--from-height", "9", "--to-height", "1",
                          "--out", "{dir}/x.jsonl"], "BAD_EXPORT"),
    ("no snapshot there", ["snapshot", "verify", "{dir}/no-snapshot"], "USAGE"),
]


@pytest.mark.parametrize("case,args,code", CASES, ids=[c[0] for c in CASES])
def test_cli_failure_modes(chain_dir, case, args, code):
    argv = [a.format(dir=chain_dir["dir"]) for a in args]
    assert one_line(cli("--data-dir", chain_dir["data"], *argv, cwd=chain_dir["dir"]))["code"] == code


def test_a_corrupt_store_is_one_line_and_debug_adds_the_traceback(tmp_path):
    data = str(tmp_path / "data")
    assert cli("--data-dir", data, "init").returncode == 0
    with open(os.path.join(data, "log", "CURRENT"), "w") as f:
        f.write("garbage\n")
    assert one_line(cli("--data-dir", data, "status"))["code"] == "CORRUPT"
    debug = cli("--data-dir", data, "--debug", "status")
    assert debug.returncode == 1 and b"Traceback" in debug.stderr
    assert json.loads(debug.stderr.decode().strip().splitlines()[-1])["code"] == "CORRUPT"


def test_a_locked_store_is_one_line(tmp_path):
    data = str(tmp_path / "data")
    cfg = Config(data_dir=data, sync=False)
    init_chain(cfg, dev_genesis(cfg.keys_dir))
    (tmp_path / "empty.jsonl").write_text("")
    with open_chain(cfg):  # this process holds the write lock; no node answers for it
        assert one_line(cli("--data-dir", data, "ingest", str(tmp_path / "empty.jsonl")))["code"] == "LOCKED"


def test_an_unexpected_error_is_internal_exit_2(monkeypatch, capsys):
    from ledgerlog.ops import cli as cli_module
    assert cli_module.report(RuntimeError("a bug")) == 2
    doc = json.loads(capsys.readouterr().err)
    assert doc["code"] == "INTERNAL" and "a bug" not in doc["error"]


# -- HTTP -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[Node]:
    cfg = Config(data_dir=str(tmp_path_factory.mktemp("http") / "data"), sync=False, admin_token=TOKEN)
    init_chain(cfg, dev_genesis(cfg.keys_dir))
    n = Node(cfg)
    n.start()
    yield n
    n.stop()


@pytest.fixture(scope="module")
def client(node) -> Iterator[TestClient]:
    with TestClient(create_app(node, limits=HttpLimits(ingest_rate=0)), raise_server_exceptions=False) as c:
        yield c


BAD_SEGMENTS = ["zz", "g" * 40, "A" * 41, "-1", "9" * 30, "9223372036854775808", "\u00b2", "%00", "..", "x" * 5000,
                "latest", "0"]
BAD_QUERIES = ["-1", "9" * 30, "abc", "", "1.5", "0x10", "9223372036854775808"]
BAD_BODIES = [b"", b"{", b"[]", b"null", b'"x"', b'{"unknown": 1}', b'{"address": 1e999}',
              b'{"address": "' + b"g" * 40 + b'"}', b"[" * 5000, b"\xff\xfe\x00", b'{"jsonrpc":"2.0","id":' + b"9" * 400 + b"}"]


def _path(template: str, value: str = "x") -> str:
    for name in path_params(template):
        template = template.replace("{" + name + "}", value)
    return template


def assert_shape(r: Any, route: str) -> None:
    assert r.status_code < 500, (route, r.request.method, r.request.url, r.status_code, r.text[:300])
    if r.status_code >= 400 and not (route == "/v1/ingest" and r.status_code == 422):
        body = r.json()
        assert isinstance(body["code"], str) and body["code"] and isinstance(body["message"], str), (route, body)
        assert error_class_for(body["code"]) is not None, (route, body)
    assert not re.search(r'(?<![\w:/.~>-])/(?:tmp|home|root|work|var)/', r.text), (route, r.text[:300])


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_every_route_answers_bad_input_in_the_one_shape(node, client, route):
    admin = {"Authorization": f"Bearer {TOKEN}"} if route.path.startswith("/v1/admin") else {}
    paths = [_path(route.path, v) for v in BAD_SEGMENTS] if path_params(route.path) else [route.path]
    if route.path.startswith("/v1/admin"):  # every action of the node's table, and unknown ones
        paths = [_path(route.path, name) for name in (*node.actions, "nope", "9" * 30)]
    for path in paths:
        queries = [""] + [f"?{p.name}={v}" for p in route.params for v in BAD_QUERIES] + ["?unknown=1"]
        for q in queries:
            if route.method == "GET":
                assert_shape(client.get(path + q, headers=admin), route.path)
        if route.method == "POST":
            for body in BAD_BODIES if not admin else BAD_BODIES[1:]:  # an empty body runs an admin action
                for ct in ("application/json", "application/x-ndjson"):
                    assert_shape(client.post(path, content=body, headers={**admin, "Content-Type": ct}), route.path)
    assert not node.controls.ingest_paused and not node.controls.faucet_paused


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_every_route_refuses_other_methods(client, route):
    path = _path(route.path, "x")
    taken = {r.method for r in ROUTES if _path(r.path, "x") == path}
    for method in sorted({"GET", "POST", "PUT", "DELETE", "PATCH"} - taken):
        r = client.request(method, path, content=b"{}")
        assert r.status_code == 405 and r.json()["code"] == "METHOD_NOT_ALLOWED", (method, path, r.text)


@pytest.mark.parametrize("path", ["/v1/nope", "/v1/accounts", "/v1/accounts/a/b", "/v1/status/", "/v1", "/x" * 500,
                                  "/v1/admin", "/schemas/ids/1/x"])
def test_unknown_routes_are_404_in_the_one_shape(client, path):
    r = client.get(path)
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND" and r.json()["message"]


def test_every_admin_action_refuses_unknown_fields(node, client):
    admin = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    for name in node.actions:
        r = client.post(f"/v1/admin/{name}", content=b'{"zz_unknown": 1}', headers=admin)
        assert r.status_code == 400 and r.json()["code"] == "BAD_REQUEST", (name, r.text)
    assert not node.controls.ingest_paused and not node.controls.faucet_paused


def test_the_schema_registry_keeps_its_confluent_error_code(client):
    r = client.get("/schemas/ids/987654")
    assert r.status_code == 404 and r.json() == {"error_code": 40403, "code": "NOT_FOUND",
                                                 "message": "Schema 987654 not found"}
    assert r.headers["content-type"].startswith("application/vnd.schemaregistry.v1+json")


def test_errors_raised_anywhere_are_answered_from_the_table(node, client, monkeypatch):
    """A LedgerError a handler raises is answered with its class's status and code (the lane and
    FastAPI alike), a storage error with its path-free ``public`` message."""
    from ledgerlog.engine.errors import (
        RateLimitedError,
        ReprojectRunningError,
        StorageUnavailableError,
    )
    for exc in (ReprojectRunningError("busy"), RateLimitedError("slow down", 2.5),
                StorageUnavailableError(f"{node.config.data_dir}/log: EIO")):
        def boom(*_: Any, exc: Exception = exc) -> Any:
            raise exc
        monkeypatch.setattr(node.queries, "status", boom)
        app = create_app(node)
        with TestClient(app, raise_server_exceptions=False) as c:
            for lane in (True, False):
                app.fast_lane = app.fast_lane if lane else None
                r = c.get("/v1/status")
                assert r.status_code == type(exc).http_status and r.json()["code"] == type(exc).code, r.text
                assert node.config.data_dir not in r.text
                if isinstance(exc, RateLimitedError):
                    assert r.headers["retry-after"] == "3"
                if isinstance(exc, StorageUnavailableError):
                    assert r.json()["message"] == StorageUnavailableError.public
