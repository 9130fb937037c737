"""Pool workers end when their parent is killed (kill -9): a killed ingest or verify must not
leave processes behind holding its pipes or store locks."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from clitools import REPO

CHILD = """
import sys, time
from concurrent.futures import ProcessPoolExecutor
from ledgerlog.engine.procs import exit_with_parent
pool = ProcessPoolExecutor(2, initializer=exit_with_parent)
print(*pool.map(abs, [1, 2]), flush=True)
print(*[p.pid for p in pool._processes.values()], flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie awaiting its reaper counts as gone
        return f.read().split(")")[-1].split()[0] != "Z"


def test_workers_exit_when_the_parent_is_killed():
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True,
                            cwd=str(REPO))
    try:
        proc.stdout.readline()  # the pool has run work
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    for _ in range(100):  # bounded: 10 s
        if not any(_alive(p) for p in workers):
            break
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), workers
