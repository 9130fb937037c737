"""Commands as a user at a terminal meets them: stdout and stderr on pseudo-terminals (the
progress bar is drawn, the command works and prints its JSON), and on pipes (no progress, nothing
on stderr, one line of JSON). Every command that may draw progress is run both ways."""
from __future__ import annotations

import fcntl
import json
import os
import select
import struct
import subprocess
import termios
import time
import uuid
from typing import Any

import pytest
from clitools import LEDGERLOG, REPO, cli_env, ok_json
from kafka_broker import kafka_bootstrap  # noqa: F401  (the session fixture, for the mirror test)

EVENTS = 600
SEED = 5
DEADLINE = 120.0


def _env() -> dict[str, str]:
    return cli_env(COLUMNS="100", LINES="30", TERM="xterm")


def on_tty(*args: str, stdin: bytes | None = None, limit: float = DEADLINE,
           size: tuple[int, int] = (30, 100)) -> tuple[int, bytes, bytes]:
    """Run ``ledgerlog ARGS`` with stdout and stderr on two pseudo-terminals of ``size`` (rows,
    columns; stdin on one too, unless ``stdin`` bytes are piped in); (exit code, what stdout
    showed, what stderr showed)."""
    out_m, out_s = os.openpty()
    err_m, err_s = os.openpty()
    for fd in (out_s, err_s):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    try:
        proc = subprocess.Popen([LEDGERLOG, *args], stdin=subprocess.PIPE if stdin is not None else err_s,
                                stdout=out_s, stderr=err_s, env=_env(), start_new_session=True)
    finally:
        os.close(out_s)
        os.close(err_s)
    if stdin is not None:
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
    got = {out_m: bytearray(), err_m: bytearray()}
    open_fds = [out_m, err_m]
    deadline = time.monotonic() + limit
    try:
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                raise AssertionError(f"{args} did not finish on a terminal within {limit} s: "
                                     f"{bytes(got[err_m][-2000:])!r}")
            ready, _, _ = select.select(open_fds, [], [], min(left, 1.0))
            for fd in ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: every writer of the terminal has closed it
                    chunk = b""
                if chunk:
                    got[fd] += chunk
                else:
                    open_fds.remove(fd)
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(out_m)
        os.close(err_m)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return rc, bytes(got[out_m]), bytes(got[err_m])


def on_pipe(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([LEDGERLOG, *args], input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, timeout=DEADLINE, env=_env())


def tty_json(out: bytes) -> Any:
    """The JSON a command printed on a terminal (indented, with the terminal's CR LF line ends)."""
    return json.loads(out.replace(b"\r\n", b"\n"))


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("hist")
    h, g = str(d / "history.jsonl"), str(d / "genesis.json")
    ok_json(on_pipe("generate", "--events", str(EVENTS), "--seed", str(SEED), "--out", h, "--genesis-out", g))
    return {"history": h, "genesis": g}


def _fresh(tmp_path, history: dict[str, str]) -> str:
    data = str(tmp_path / f"d-{uuid.uuid4().hex[:6]}")
    ok_json(on_pipe("--data-dir", data, "init", "--genesis", history["genesis"]))
    return data


@pytest.fixture
def loaded(tmp_path, history) -> str:
    """A data dir holding the generated history."""
    data = _fresh(tmp_path, history)
    ok_json(on_pipe("--data-dir", data, "ingest", history["history"]))
    return data


def _lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


# -- ingest -----------------------------------------------------------------------------------


def test_ingest_file_on_a_terminal_draws_a_bar_with_the_file_size(tmp_path, history):
    data = _fresh(tmp_path, history)
    rc, out, err = on_tty("--data-dir", data, "ingest", history["history"])
    assert rc == 0, err.decode(errors="replace")[-3000:]
    assert tty_json(out)["accepted"] == _lines(history["history"])
    assert b"Traceback" not in err
    assert b"ingest history.jsonl" in err and b"100%" in err  # a known total (bytes), run to the end


def test_ingest_stdin_on_a_terminal_draws_a_bar_without_a_total(tmp_path, history):
    data = _fresh(tmp_path, history)
    with open(history["history"], "rb") as f:
        body = f.read()
    rc, out, err = on_tty("--data-dir", data, "ingest", "-", stdin=body, size=(0, 0))  # a terminal with no size
    assert rc == 0, err.decode(errors="replace")[-3000:]
    assert tty_json(out)["accepted"] == _lines(history["history"])
    assert b"Traceback" not in err and b"ingest -" in err


def test_ingest_on_a_pipe_prints_one_json_line_and_nothing_else(tmp_path, history):
    data = _fresh(tmp_path, history)
    res = on_pipe("--data-dir", data, "ingest", history["history"])
    assert res.returncode == 0 and res.stderr == b""
    assert res.stdout.count(b"\n") == 1 and json.loads(res.stdout)["accepted"] == _lines(history["history"])


# -- the other commands that work through the whole log ---------------------------------------

#: command -> (arguments after the data dir, text of its bar, or None when it draws none)
COMMANDS: dict[str, tuple[list[str], bytes | None]] = {
    "reproject": (["reproject"], b"reproject"),
    "verify": (["verify"], None),
    "export": (["export", "--topic", "ledger.transactions", "--out", "{tmp}/tx.jsonl"], None),
    "snapshot": (["snapshot", "create", "--out", "{tmp}/snaps"], None),
    "status": (["status"], None),
    "generate": (["generate", "--events", "300", "--out", "{tmp}/gen.jsonl"], None),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_on_a_terminal(name, loaded, tmp_path):
    args, bar = COMMANDS[name]
    rc, out, err = on_tty("--data-dir", loaded, *[a.format(tmp=tmp_path) for a in args])
    assert rc == 0, (out.decode(errors="replace")[-2000:], err.decode(errors="replace")[-3000:])
    assert isinstance(tty_json(out), dict)
    assert b"Traceback" not in err
    if bar is not None:
        assert bar in err and b"100%" in err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_on_a_pipe_draws_no_progress(name, loaded, tmp_path):
    args, _ = COMMANDS[name]
    res = on_pipe("--data-dir", loaded, *[a.format(tmp=tmp_path) for a in args])
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr == b""
    assert res.stdout.count(b"\n") == 1 and isinstance(json.loads(res.stdout), dict)


# -- audit ------------------------------------------------------------------------------------


def test_audit_on_a_terminal_draws_a_bar_and_on_a_pipe_none(loaded, tmp_path):
    pubkey = ok_json(on_pipe("--data-dir", loaded, "status"))["log_pubkey"]
    rc, out, err = on_tty("--data-dir", loaded, "audit", "--log-pubkey", pubkey)
    assert rc == 0, err.decode(errors="replace")[-3000:]
    assert tty_json(out)["ok"] is True
    assert b"Traceback" not in err and b"audit" in err and b"100%" in err  # the log's ends are the total
    res = on_pipe("--data-dir", loaded, "audit", "--log-pubkey", pubkey)
    assert res.returncode == 0 and res.stderr == b"", res.stderr[-3000:]
    assert res.stdout.count(b"\n") == 1 and json.loads(res.stdout)["ok"] is True
    raw = on_pipe("--data-dir", loaded, "tail", "ledger.transactions", "--raw").stdout
    rc, out, err = on_tty("audit", "--log-pubkey", pubkey, "--records", "-", stdin=raw)  # no total: records
    assert rc == 1 and b"Traceback" not in err and b"audit" in err, err.decode(errors="replace")[-3000:]
    assert tty_json(out)["failure"]["code"] == "NO_HEADS"


# -- mirror (needs a Kafka broker) -------------------------------------------------------------


@pytest.mark.kafka
def test_mirror_on_a_terminal_and_on_a_pipe(loaded, kafka_bootstrap):  # noqa: F811
    to = f"kafka://{kafka_bootstrap}"
    rc, out, err = on_tty("--data-dir", loaded, "mirror", "--to", to,
                          "--topic-prefix", f"tty-{uuid.uuid4().hex[:8]}.")
    assert rc == 0, err.decode(errors="replace")[-3000:]
    assert tty_json(out)["ok"] is True
    assert b"Traceback" not in err and b"mirror" in err
    res = on_pipe("--data-dir", loaded, "mirror", "--to", to, "--topic-prefix", f"pipe-{uuid.uuid4().hex[:8]}.")
    assert res.returncode == 0 and res.stderr == b"", res.stderr[-3000:]
    assert json.loads(res.stdout)["ok"] is True


def test_progress_bars_come_from_one_helper():
    """Commands get bars from ledgerlog/ops/cli/progress.py only (a bare tqdm without a total
    once crashed `if bar:` on every terminal)."""
    ops_dir = REPO / "ledgerlog" / "ops"
    users = sorted(str(p.relative_to(ops_dir)) for p in ops_dir.rglob("*.py")
                   if "tqdm" in p.read_text(encoding="utf-8"))
    assert users == ["cli/progress.py"]
