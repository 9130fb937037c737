"""A secondary instance of the embedded log (a build child following the node's log) keeps its
own files in a scratch dir of the temp dir: removed when it closes, and, when it was killed
before closing, by the next secondary instance that opens."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

from clitools import REPO

from ledgerlog.engine.log.embedded import EmbeddedLog

CHILD = """
import sys, time
from ledgerlog.engine.log.embedded import EmbeddedLog
log = EmbeddedLog(sys.argv[1], secondary=True)
print("open", flush=True)
time.sleep(120)
"""


def _scratch(tmp: str) -> list[str]:
    return sorted(n for n in os.listdir(tmp) if n.startswith("ledgerlog-secondary-"))


def test_a_killed_follower_s_scratch_dir_is_removed_by_the_next_one(tmp_path, monkeypatch) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    path = str(tmp_path / "log")
    EmbeddedLog(path).close()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, path], stdout=subprocess.PIPE, text=True,
                            cwd=str(REPO), env={**os.environ, "TMPDIR": str(tmp)})
    try:
        assert proc.stdout.readline().strip() == "open"
        left = _scratch(str(tmp))
        assert len(left) == 1 and left[0].startswith(f"ledgerlog-secondary-{proc.pid}-")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert _scratch(str(tmp)) == left  # killed: nothing removed it
    live = tmp / f"ledgerlog-secondary-{os.getpid()}-other"  # a running process's: kept
    live.mkdir()

    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    follower = EmbeddedLog(path, secondary=True)
    try:
        now = _scratch(str(tmp))
        assert left[0] not in now and live.name in now and len(now) == 2
    finally:
        follower.close()
    assert _scratch(str(tmp)) == [live.name]
