"""`ledgerlog prune` as a user at a terminal meets it: on a pseudo-terminal it draws its progress
bar on stderr and prints its JSON; on a pipe it prints one line of JSON and nothing on stderr."""
from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import time
from typing import Any

import pytest
from clitools import LEDGERLOG, cli, cli_env, ok_json

from ledgerlog.engine.chain import init_chain
from ledgerlog.engine.config import Config
from ledgerlog.ops.devtools.histgen import make_genesis, write_genesis, write_history

SEED = 47


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("prunecli")
    genesis, keys = make_genesis(SEED, wallets=4)
    write_genesis(root / "genesis.json", genesis)
    write_history(root / "h.jsonl", genesis, keys, events=800, seed=SEED)
    data = root / "data"
    init_chain(Config(data_dir=str(data), sync=False), genesis)
    assert ok_json(cli(data, "ingest", str(root / "h.jsonl")))["rejected"] == 0
    return {"data": data, "tip": ok_json(cli(data, "status"))["height"]}


def _on_tty(*args: str, limit: float = 120.0) -> tuple[int, bytes, bytes]:
    """``ledgerlog ARGS`` with stderr on a pseudo-terminal (stdout piped): (exit, stdout, what stderr showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([LEDGERLOG, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
                            env=cli_env(COLUMNS="100", LINES="30", TERM="xterm"))
    os.close(slave)
    shown = bytearray()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    out = proc.stdout.read() if proc.stdout else b""
    return proc.wait(timeout=60), out, bytes(shown)


def test_prune_draws_a_bar_on_a_terminal_and_nothing_on_a_pipe(loaded, tmp_path) -> None:
    for mode in ("tty", "pipe"):
        data = tmp_path / mode
        shutil.copytree(loaded["data"], data)
        args = ("--data-dir", str(data), "prune", "--before-height", str(loaded["tip"] // 2))
        if mode == "tty":
            rc, out, err = _on_tty(*args)
            assert rc == 0, err[-2000:]
            assert b"prune below" in err and b"records" in err  # the bar: its label and unit
        else:
            proc = subprocess.run([LEDGERLOG, *args], capture_output=True, timeout=120, env=cli_env(),
                                  stdin=subprocess.DEVNULL)
            rc, out, err = proc.returncode, proc.stdout, proc.stderr
            assert rc == 0 and err == b""
            assert out.count(b"\n") == 1
        assert json.loads(out)["height"] == loaded["tip"] // 2
