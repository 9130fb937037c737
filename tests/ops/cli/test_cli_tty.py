"""Commands as a user at a terminal meets them: stdout and stderr on pseudo-terminals (the
progress bar is drawn with its total and an ETA and ends at 100%, the command works and prints its
JSON), on pipes (no progress, nothing on stderr, one line of JSON), and with --quiet on a terminal
(no bar). Every command that may draw progress is run all three ways."""
from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import termios
import time
import uuid
from typing import Any

import httpx
import pytest
from clitools import LEDGERLOG, REPO, cli_env, ok_json, running_node
from kafka_broker import kafka_bootstrap  # noqa: F401  (the session fixture, for the mirror test)
from tqdm import tqdm

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


#: one drawing of a bar with a known total: "desc[ phase]: pct%|bar| n/total unit [elapsed, ETA t, rate]"
_SIZED_BAR = re.compile(rb"(?P<desc>[^\r\n|]+?): +(?P<pct>\d+)%\|[^|\r\n]*\| (?P<n>[\d.]+[kMGTPEZY]?)/"
                        rb"(?P<total>[\d.]+[kMGTPEZY]?)(?P<unit>[^\[\r\n]*)\[[^,\]]+, ETA (?P<eta>[^,\]]+),")


def final_bar(err: bytes, desc: bytes) -> re.Match[bytes]:
    """The last drawing of the bar named ``desc``, asserted to show a total, an ETA and the job
    done: 100%, as many units done as its total, nothing left."""
    frames = [m for m in _SIZED_BAR.finditer(err) if m["desc"].strip().startswith(desc)]
    assert frames, f"no {desc!r} bar with a total and an ETA in {err[-3000:]!r}"
    last = frames[-1]
    assert (last["pct"], last["n"], last["eta"]) == (b"100", last["total"], b"00:00"), last.group(0)
    return last


def sized(n: int, unit: str = "") -> bytes:
    """``n`` as the bar writes a total (``unit`` "B": in binary multiples)."""
    return tqdm.format_sizeof(n, divisor=1024 if unit == "B" else 1000).encode()


def no_bar(err: bytes) -> None:
    """Nothing drawn: not a byte on stderr."""
    assert err == b"", err[-2000:]


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
    bar = final_bar(err, b"ingest history.jsonl")  # a known total (bytes), run to the end
    assert bar["total"] == sized(os.path.getsize(history["history"]), "B") and bar["unit"].strip() == b"B"


@pytest.mark.parametrize("where", ["global", "command"])
def test_ingest_quiet_on_a_terminal_draws_nothing(tmp_path, history, where):
    data = _fresh(tmp_path, history)
    args = ["--quiet", "--data-dir", data, "ingest", history["history"]] if where == "global" else \
        ["--data-dir", data, "ingest", history["history"], "--quiet"]
    rc, out, err = on_tty(*args)
    assert rc == 0 and tty_json(out)["accepted"] == _lines(history["history"])
    no_bar(err)


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
    "verify": (["verify"], b"verify"),
    "export": (["export", "--topic", "ledger.transactions", "--out", "{tmp}/tx.jsonl"], b"export ledger.transactions"),
    "snapshot": (["snapshot", "create", "--out", "{tmp}/snaps"], b"snapshot"),
    "status": (["status"], None),
    "generate": (["generate", "--events", "300", "--out", "{tmp}/gen.jsonl"], b"generate"),
}
PROGRESS = sorted(name for name, (_args, bar) in COMMANDS.items() if bar is not None)


def _total(name: str, printed: dict[str, Any], loaded: str) -> int | None:
    """The total a command's bar must show, from what it printed (None: not told by its output)."""
    if name == "export":
        return printed["records"]  # the whole topic: every record of it is in range
    if name == "generate":
        return printed["events"]   # asked for 300, wrote a few more: the total grew to them
    if name == "reproject":
        return sum(p["events"] for p in printed["projections"])
    return None  # verify, snapshot: the bar's own total, reached (final_bar)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_on_a_terminal(name, loaded, tmp_path):
    args, bar = COMMANDS[name]
    rc, out, err = on_tty("--data-dir", loaded, *[a.format(tmp=tmp_path) for a in args])
    assert rc == 0, (out.decode(errors="replace")[-2000:], err.decode(errors="replace")[-3000:])
    printed = tty_json(out)
    assert isinstance(printed, dict)
    assert b"Traceback" not in err
    if bar is None:
        no_bar(err)
        return
    drawn = final_bar(err, bar)
    total = _total(name, printed, loaded)
    if total is not None:
        assert drawn["total"] == sized(total), (drawn.group(0), total)


@pytest.mark.parametrize("where", ["global", "command"])
@pytest.mark.parametrize("name", PROGRESS)
def test_command_quiet_on_a_terminal_draws_nothing(name, where, loaded, tmp_path):
    args = [a.format(tmp=tmp_path) for a in COMMANDS[name][0]]
    args = ["--quiet", "--data-dir", loaded, *args] if where == "global" else ["--data-dir", loaded, *args, "--quiet"]
    rc, out, err = on_tty(*args)
    assert rc == 0, err.decode(errors="replace")[-3000:]
    assert isinstance(tty_json(out), dict)
    no_bar(err)


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
    assert b"Traceback" not in err
    assert final_bar(err, b"audit")["total"] == sized(tty_json(out)["records"])  # the log's ends are the total
    res = on_pipe("--data-dir", loaded, "audit", "--log-pubkey", pubkey)
    assert res.returncode == 0 and res.stderr == b"", res.stderr[-3000:]
    assert res.stdout.count(b"\n") == 1 and json.loads(res.stdout)["ok"] is True
    rc, out, err = on_tty("--data-dir", loaded, "audit", "--log-pubkey", pubkey, "--quiet")
    assert rc == 0 and tty_json(out)["ok"] is True
    no_bar(err)
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
    printed = tty_json(out)
    assert printed["ok"] is True
    assert b"Traceback" not in err
    assert final_bar(err, b"mirror")["total"] == sized(2 * printed["records"])  # copied, then hashed
    res = on_pipe("--data-dir", loaded, "mirror", "--to", to, "--topic-prefix", f"pipe-{uuid.uuid4().hex[:8]}.")
    assert res.returncode == 0 and res.stderr == b"", res.stderr[-3000:]
    assert json.loads(res.stdout)["ok"] is True
    rc, out, err = on_tty("--data-dir", loaded, "mirror", "--to", to, "--quiet",
                          "--topic-prefix", f"quiet-{uuid.uuid4().hex[:8]}.")
    assert rc == 0 and tty_json(out)["ok"] is True
    no_bar(err)


# -- snapshot restore and verify ----------------------------------------------------------------


@pytest.fixture
def snapshot(loaded, tmp_path) -> dict[str, Any]:
    """A snapshot of ``loaded``: what `snapshot create` printed."""
    return ok_json(on_pipe("--data-dir", loaded, "snapshot", "create", "--out", str(tmp_path / "snaps")))


def test_snapshot_restore_on_a_terminal_on_a_pipe_and_quiet(snapshot, tmp_path):
    rc, out, err = on_tty("--data-dir", str(tmp_path / "r-tty"), "snapshot", "restore", snapshot["path"])
    assert rc == 0, err.decode(errors="replace")[-3000:]
    assert tty_json(out)["height"] == snapshot["height"] and b"Traceback" not in err
    drawn = final_bar(err, b"restore")  # every byte verified, then copied
    assert (drawn["total"], drawn["unit"].strip()) == (sized(2 * snapshot["size"], "B"), b"B")
    res = on_pipe("--data-dir", str(tmp_path / "r-pipe"), "snapshot", "restore", snapshot["path"])
    assert res.returncode == 0 and res.stderr == b"" and res.stdout.count(b"\n") == 1, res.stderr[-3000:]
    rc, out, err = on_tty("--data-dir", str(tmp_path / "r-quiet"), "snapshot", "restore", snapshot["path"], "-q")
    assert rc == 0 and tty_json(out)["height"] == snapshot["height"]
    no_bar(err)


@pytest.mark.parametrize("deep", [False, True])
def test_snapshot_verify_on_a_terminal_on_a_pipe_and_quiet(snapshot, deep):
    args = ["snapshot", "verify", snapshot["path"], *(["--deep"] if deep else [])]
    rc, out, err = on_tty(*args)
    assert rc == 0 and tty_json(out)["ok"] is True, err.decode(errors="replace")[-3000:]
    drawn = final_bar(err, b"snapshot")  # hashed (and with --deep copied too)
    assert drawn["total"] == sized((2 if deep else 1) * snapshot["size"], "B")
    res = on_pipe(*args)
    assert res.returncode == 0 and res.stderr == b"" and json.loads(res.stdout)["ok"] is True
    rc, out, err = on_tty("--quiet", *args)
    assert rc == 0 and tty_json(out)["ok"] is True
    no_bar(err)


# -- through a running node: the node's job, polled ----------------------------------------------


def _node_job(url: str, action: str) -> dict[str, Any]:
    """The one finished job of ``action`` the node shows (the CLI named it)."""
    jobs = [j for j in httpx.get(url + "/v1/status", timeout=10).json()["jobs"].values() if j["action"] == action]
    assert len(jobs) == 1 and jobs[0]["state"] == "done", jobs
    return jobs[0]


@pytest.mark.parametrize("action", ["reproject", "snapshot"])
def test_a_job_the_node_runs_draws_the_nodes_progress(action, loaded):
    args = ["reproject"] if action == "reproject" else ["snapshot", "create"]
    with running_node(loaded) as url:
        rc, out, err = on_tty("--data-dir", loaded, *args)
        assert rc == 0, err.decode(errors="replace")[-3000:]
        printed = tty_json(out)
        assert b"Traceback" not in err
        job = _node_job(url, action)  # the figures the CLI polled: the bar ends on them
        unit = "B" if action == "snapshot" else ""
        assert job["done"] == job["total"] > 0
        assert final_bar(err, action.encode())["total"] == sized(job["total"], unit)
        if action == "reproject":
            assert job["total"] == sum(p["events"] for p in printed["projections"])
        else:
            assert printed["via"] == "node"
        res = on_pipe("--data-dir", loaded, *args)
        assert res.returncode == 0 and res.stderr == b"" and res.stdout.count(b"\n") == 1, res.stderr[-3000:]
        rc, out, err = on_tty("--data-dir", loaded, *args, "--quiet")
        assert rc == 0 and isinstance(tty_json(out), dict)
        no_bar(err)


def test_ingest_through_a_node_draws_the_file_size(tmp_path, history):
    data = _fresh(tmp_path, history)
    lines = _lines(history["history"])
    with running_node(data):
        rc, out, err = on_tty("--data-dir", data, "ingest", history["history"])
        assert rc == 0 and tty_json(out)["accepted"] == lines, err.decode(errors="replace")[-3000:]
        assert final_bar(err, b"ingest history.jsonl")["total"] == sized(os.path.getsize(history["history"]), "B")
        res = on_pipe("--data-dir", data, "ingest", history["history"])  # all duplicates now
        assert res.returncode == 0 and res.stderr == b"" and json.loads(res.stdout)["duplicates"] == lines
        rc, out, err = on_tty("--data-dir", data, "-q", "ingest", history["history"])
        assert rc == 0 and tty_json(out)["duplicates"] == lines
        no_bar(err)


def test_progress_bars_come_from_one_helper():
    """Commands get bars from ledgerlog/ops/cli/progress.py only (a bare tqdm without a total
    once crashed `if bar:` on every terminal)."""
    ops_dir = REPO / "ledgerlog" / "ops"
    users = sorted(str(p.relative_to(ops_dir)) for p in ops_dir.rglob("*.py")
                   if "tqdm" in p.read_text(encoding="utf-8"))
    assert users == ["cli/progress.py"]
