"""Storage faults (EIO on fsync, a full disk): writes answer 503 STORAGE_UNAVAILABLE (no path in the
answer), readiness and health say not writable, ledgerlog_storage_writable is 0 and the error
counter moves, reads keep answering 200, the node keeps running, and writes resume by themselves
once the fault clears. Faults are injected in-process through engine.diskfaults (RocksDB's own
fsync is out of Python's reach), and for real with a full tmpfs where this machine can mount one.
A storage error on the CLI is one JSON line on stderr and exit 2."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from clitools import LEDGERLOG, cli_env, wait_node_url
from nodetools import observed_node, one, parse_metrics

from ledgerlog.engine import diskfaults
from ledgerlog.engine.chain import init_chain
from ledgerlog.engine.config import Config
from ledgerlog.ops.devtools.histgen import make_genesis, write_genesis, write_history

NDJSON = {"Content-Type": "application/x-ndjson"}


@pytest.fixture(autouse=True)
def _no_fault_left() -> Any:
    yield
    diskfaults.inject(None)


def _no_path(text: str, *roots: Any) -> None:
    assert not any(str(r) in text for r in roots), text
    assert "/tmp" not in text and "/work" not in text, text


def _until(check: Any, limit: float = 20.0) -> Any:
    """Poll ``check`` (bounded) until it returns something truthy."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


@pytest.mark.parametrize("fault", [errno.EIO, errno.ENOSPC])
def test_injected_fault_503_ready_metrics_reads_and_recovery(tmp_path, fault) -> None:
    with observed_node(tmp_path) as w:
        node, client, lines = w["node"], w["client"], w["lines"]
        first, second = lines[:200], lines[200:]
        assert client.post("/v1/ingest", content=b"\n".join(first) + b"\n", headers=NDJSON).status_code == 200
        _until(lambda: client.get("/v1/ready").status_code == 200)
        height = client.get("/v1/status").json()["height"]
        addr = next(iter(w["genesis"]["allocations"]))

        diskfaults.inject(fault)
        r = client.post("/v1/ingest", content=b"\n".join(second) + b"\n", headers=NDJSON)
        assert r.status_code == 503 and r.json()["code"] == "STORAGE_UNAVAILABLE", r.text
        _no_path(r.text, tmp_path)
        r = client.post("/v1/ingest", content=b"\n".join(second) + b"\n", headers=NDJSON)  # fails fast, same answer
        assert r.status_code == 503 and r.json()["code"] == "STORAGE_UNAVAILABLE"
        ready = client.get("/v1/ready")
        assert ready.status_code == 503 and ready.json()["writable"] is False
        assert ready.json()["code"] == "STORAGE_UNAVAILABLE"
        _no_path(ready.text, tmp_path)
        health = client.get("/v1/health")
        assert health.status_code == 200 and health.json()["storage"]["writable"] is False
        assert health.json()["status"] == "degraded"
        kind = "eio" if fault == errno.EIO else "enospc"
        m = parse_metrics(client.get("/metrics").text)
        assert one(m, "ledgerlog_storage_writable") == 0
        assert one(m, "ledgerlog_storage_errors_total", kind=kind) >= 1
        node.config = replace(node.config, admin_token="t0ken")
        admin = client.post("/v1/admin/pause", headers={"Authorization": "Bearer t0ken"})
        assert admin.status_code == 503 and admin.json()["code"] == "STORAGE_UNAVAILABLE", admin.text
        assert client.get("/v1/ready").json()["ingest_paused"] is False  # refused: nothing done
        # reads keep answering
        assert client.get("/v1/status").status_code == 200
        assert client.get("/v1/status").json()["height"] == height
        assert client.get(f"/v1/accounts/{addr}").status_code == 200
        time.sleep(1.5)  # the fold loop and the probe meet the fault several times meanwhile
        assert all(t.is_alive() for t in node._threads) and not node._stop.is_set()

        diskfaults.inject(None)  # the fault clears: no restart
        _until(lambda: client.get("/v1/ready").status_code == 200)
        r = client.post("/v1/ingest", content=b"\n".join(second) + b"\n", headers=NDJSON)
        assert r.status_code == 200, r.text
        assert r.json()["rejected"] == 0 and r.json()["accepted"] + r.json()["duplicates"] == len(second)
        m = parse_metrics(client.get("/metrics").text)
        assert one(m, "ledgerlog_storage_writable") == 1
        assert client.get("/v1/health").json()["status"] == "ok"
        _until(lambda: client.get("/v1/status").json()["height"] > height)
        assert all(t.is_alive() for t in node._threads)


def test_fold_commit_failure_retries_instead_of_stopping_the_node(tmp_path) -> None:
    """A projection commit the disk refuses (with nothing to append) must not stop the node."""
    with observed_node(tmp_path) as w:
        node, client, lines = w["node"], w["client"], w["lines"]
        diskfaults.inject(errno.ENOSPC, under=node.config.projections_dir)  # the log still takes writes
        assert node.admitter.admit(lines[:300]).rejected == 0
        time.sleep(1.0)  # folds fail and retry
        assert not node._stop.is_set() and all(t.is_alive() for t in node._threads)
        assert client.get("/v1/ready").status_code == 503
        assert client.get("/v1/status").status_code == 200
        diskfaults.inject(None)
        _until(lambda: node.runner.lag() == {n: 0 for n in node.runner.handles})
        assert client.get("/v1/ready").status_code == 200


def test_a_log_that_cannot_be_read_for_a_while_does_not_stop_the_node(tmp_path, monkeypatch) -> None:
    """A fold whose log read fails (a Kafka broker unreachable past ledgerlog.timeout.ms: LogError)
    is retried with backoff, as a disk fault is: the node stopped for good, and stayed down when
    the broker came back."""
    from ledgerlog.engine.errors import LogError

    with observed_node(tmp_path) as w:
        node, lines = w["node"], w["lines"]
        real, failing = node.runner.step, [True]

        def step(*a: Any, **k: Any) -> int:
            if failing[0]:
                raise LogError("reading ledger.blocks[0]: no answer within 5 s")
            return real(*a, **k)
        monkeypatch.setattr(node.runner, "step", step)
        assert node.admitter.admit(lines[:300]).rejected == 0
        time.sleep(1.0)  # folds fail and retry
        assert not node._stop.is_set() and all(t.is_alive() for t in node._threads)
        failing[0] = False
        _until(lambda: node.runner.lag() == {n: 0 for n in node.runner.handles})


def test_cli_storage_error_is_one_line_exit_2(tmp_path, monkeypatch, capsys) -> None:
    """In-process: an ingest whose append the disk refuses."""
    from ledgerlog.ops import cli
    genesis, keys = make_genesis(7, wallets=4)
    write_genesis(tmp_path / "genesis.json", genesis)
    write_history(tmp_path / "h.jsonl", genesis, keys, events=50, seed=7)
    data = tmp_path / "data"
    init_chain(Config(data_dir=str(data), sync=False), genesis)
    diskfaults.inject(errno.EIO)
    monkeypatch.setattr("sys.argv", ["ledgerlog", "--data-dir", str(data), "ingest", str(tmp_path / "h.jsonl")])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert json.loads(err)["code"] == "STORAGE_UNAVAILABLE"


# -- a real full disk (tmpfs) ------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path) -> Any:
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(directory: Path) -> Path:
    """A file taking every free byte of ``directory``'s file system."""
    filler = directory / f"filler-{uuid.uuid4().hex}"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to flush at close
        st = os.statvfs(directory)
        try:
            os.posix_fallocate(f.fileno(), 0, max(st.f_bavail * st.f_frsize - 4096, 4096))
        except OSError:
            pass
        f.seek(0, os.SEEK_END)
        block = b"\xff" * 65536
        try:
            f.writelines(block for _ in range(100_000))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_disk_503_then_writes_resume_without_restart(small_fs, tmp_path) -> None:
    genesis, keys = make_genesis(11, wallets=6)
    write_history(tmp_path / "h.jsonl", genesis, keys, events=6000, seed=11)
    lines = (tmp_path / "h.jsonl").read_bytes().splitlines()
    data = small_fs / "data"
    init_chain(Config(data_dir=str(data)), genesis)
    proc = subprocess.Popen([LEDGERLOG, "--data-dir", str(data), "run", "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env())
    try:
        url = wait_node_url(str(data), proc)
        def post(part):
            return httpx.post(url + "/v1/ingest", content=b"\n".join(part) + b"\n",
                                               headers={"Content-Type": "application/x-ndjson"}, timeout=60)
        assert post(lines[:500]).status_code == 200
        filler = _fill(small_fs)
        answers = []
        for i in range(500, len(lines), 500):  # the WAL's preallocated room runs out at some chunk
            r = post(lines[i:i + 500])
            answers.append(r.status_code)
            if r.status_code == 503:
                break
        assert answers[-1] == 503, answers
        assert r.json()["code"] == "STORAGE_UNAVAILABLE", r.text
        _no_path(r.text, small_fs)
        assert httpx.get(url + "/v1/ready", timeout=10).json()["writable"] is False
        m = parse_metrics(httpx.get(url + "/metrics", timeout=10).text)
        assert one(m, "ledgerlog_storage_writable") == 0 and one(m, "ledgerlog_storage_errors_total", kind="enospc") >= 1
        assert httpx.get(url + "/v1/status", timeout=10).status_code == 200
        assert proc.poll() is None

        filler.unlink()  # space again: no restart
        _until(lambda: httpx.get(url + "/v1/ready", timeout=10).status_code == 200, limit=30)
        r = post(lines[i:i + 500])  # the refused chunk, again: admitted now (or partly, before, as duplicates)
        assert r.status_code == 200, r.text[:2000]
        assert r.json()["accepted"] + r.json()["duplicates"] == len(lines[i:i + 500])
        assert proc.poll() is None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_cli_on_a_full_disk_is_one_line_exit_2(small_fs, tmp_path) -> None:
    genesis, keys = make_genesis(13, wallets=4)
    write_history(tmp_path / "h.jsonl", genesis, keys, events=3000, seed=13)
    data = small_fs / "data"
    init_chain(Config(data_dir=str(data)), genesis)
    _fill(small_fs)
    proc = subprocess.run([LEDGERLOG, "--data-dir", str(data), "ingest", str(tmp_path / "h.jsonl")],
                          capture_output=True, timeout=120, env=cli_env())
    err = proc.stderr.decode().strip()
    assert proc.returncode == 2, (proc.returncode, err[-3000:])
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert json.loads(err)["code"] == "STORAGE_UNAVAILABLE"
    debug = subprocess.run([LEDGERLOG, "--debug", "--data-dir", str(data), "ingest", str(tmp_path / "h.jsonl")],
                           capture_output=True, timeout=120, env=cli_env())
    assert debug.returncode == 2 and "Traceback" in debug.stderr.decode()


def test_cli_on_a_read_only_mount_says_how_to_go_on(small_fs) -> None:
    """A data dir on a read-only mount: RocksDB (and rocksdict's config file) write even on a
    read-only open, so reads cannot be served there; the one line says what to do."""
    data = small_fs / "data"
    init_chain(Config(data_dir=str(data)), make_genesis(13, wallets=4)[0])
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True, capture_output=True)
    proc = subprocess.run([LEDGERLOG, "--data-dir", str(data), "tail", "ledger.blocks", "--limit", "1"],
                          capture_output=True, timeout=120, env=cli_env())
    err = proc.stderr.decode().strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    doc = json.loads(err)
    assert doc["code"] == "STORAGE_UNAVAILABLE" and "remount it read-write" in doc["error"], doc


# -- the faults file: the same seam, switched from outside the process (the torture harness) -----

def test_faults_file_switches_the_seam_from_outside(tmp_path, monkeypatch) -> None:
    """LEDGERLOG_FAULTS_FILE names a file: "EIO" or "ENOSPC" (optionally a path prefix) in it makes
    writes and probes under that prefix fail; an empty or absent file clears the fault."""
    faults = tmp_path / "faults"
    store = tmp_path / "data" / "log"
    other = tmp_path / "data" / "projections"
    monkeypatch.setenv(diskfaults.FAULTS_FILE_ENV, str(faults))
    diskfaults.check(str(store))  # no file: no fault
    faults.write_text("ENOSPC\n")
    with pytest.raises(Exception, match=os.strerror(errno.ENOSPC)):
        diskfaults.check(str(store))
    with pytest.raises(OSError) as exc:
        diskfaults.probe(str(tmp_path))
    assert exc.value.errno == errno.ENOSPC
    faults.write_text(f"EIO {store}\n")  # only under the log
    with pytest.raises(Exception, match=os.strerror(errno.EIO)):
        diskfaults.check(str(store))
    diskfaults.check(str(other))
    faults.write_text("")
    diskfaults.check(str(store))
    faults.write_text("ENOSPC\n")
    faults.unlink()
    diskfaults.check(str(store))
    monkeypatch.delenv(diskfaults.FAULTS_FILE_ENV)
    faults.write_text("EIO\n")
    diskfaults.check(str(store))  # the variable unset: the file means nothing


def test_reads_racing_a_log_reopen_never_fail(tmp_path) -> None:
    """The node's storage loop reopens the log when a fault clears while HTTP threads read the
    write-side state and the fold reads records: no read may fail (it answered 500 once)."""
    import threading

    from ledgerlog.engine.errors import StorageUnavailableError
    from ledgerlog.engine.log.base import Record
    from ledgerlog.engine.log.embedded import EmbeddedLog

    log = EmbeddedLog(str(tmp_path / "log"), sync=False)
    log.create_topics({"t": 1})
    log.append([Record("t", b"k", b"v" * 100, 1)], {b"k": b"v"})
    stop, errors = threading.Event(), []

    def reader() -> None:
        while not stop.is_set():
            try:
                assert log.state_get(b"k") == b"v"
                assert len(log.read("t", 0, 0)) == 1
            except Exception as exc:
                errors.append(repr(exc))
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(30):
            diskfaults.inject(errno.EIO)
            with pytest.raises(StorageUnavailableError):
                log.append([Record("t", b"k", b"x", 2)])
            diskfaults.inject(None)
            log.recover()  # what the storage loop does once the disk takes writes again
            if errors:
                break
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        log.close()
    assert errors == []


def test_reads_do_not_wait_for_projections_whose_disk_refuses_writes(tmp_path) -> None:
    """The log takes writes, the projections' disk refuses them: every query waited out its 5 s
    read-your-writes wait for a fold that could not happen. Reads answer from what was committed."""
    import threading
    with observed_node(tmp_path) as w:
        node, client, lines = w["node"], w["client"], w["lines"]
        assert client.post("/v1/ingest", content=b"\n".join(lines[:100]) + b"\n", headers=NDJSON).status_code == 200
        _until(lambda: client.get("/v1/ready").status_code == 200)
        diskfaults.inject(errno.ENOSPC, under=node.config.projections_dir)
        assert client.post("/v1/ingest", content=b"\n".join(lines[100:200]) + b"\n", headers=NDJSON).status_code == 200
        _until(lambda: any(h.store.writes_refused for h in node.runner.handles.values()))
        waited = threading.Thread(target=node.queries.sync, kwargs={"timeout": 3600})
        waited.start()
        waited.join(60)  # (it returns at once; an hour's wait would fail here, not hang the suite)
        assert not waited.is_alive(), "a read waited for a fold the disk refuses"
        assert client.get("/v1/status").status_code == 200
        diskfaults.inject(None)
        _until(lambda: client.get("/v1/ready").status_code == 200)


def test_a_node_starts_and_serves_reads_while_its_projections_disk_is_full(tmp_path) -> None:
    """A restart with the projections' disk full exited 2 (STORAGE_UNAVAILABLE) at its first fold,
    instead of serving what they committed and folding on once the disk takes writes again."""
    from ledgerlog.ops.node.lifecycle import Node
    with observed_node(tmp_path) as w:
        client, lines, cfg = w["client"], w["lines"], w["config"]
        assert client.post("/v1/ingest", content=b"\n".join(lines[:100]) + b"\n", headers=NDJSON).status_code == 200
        _until(lambda: client.get("/v1/ready").status_code == 200)
        w["node"].stop()
    node = Node(cfg)
    node.start()
    try:
        height = node.queries.status()["height"]
    finally:
        node.stop()
    from ledgerlog.engine.chain import open_chain
    with open_chain(cfg) as chain:  # lines the projections have not folded yet
        assert chain.admitter.admit(lines[100:200]).rejected == 0
    diskfaults.inject(errno.ENOSPC, under=cfg.projections_dir)
    node = Node(cfg)  # its first fold meets the full disk
    node.start()
    try:
        assert node.queries.status()["height"] == height  # what was committed
        diskfaults.inject(None)
        _until(lambda: node.queries.status()["height"] > height)
    finally:
        node.stop()


def test_cli_ingest_cut_short_by_the_disk_says_what_was_admitted(tmp_path, monkeypatch, capsys) -> None:
    """An ingest the disk stopped half-way said only the disk's error: not how much of the file
    went in, nor that running it again is safe."""
    from ledgerlog.engine.admission.admitter import Admitter
    from ledgerlog.ops import cli
    genesis, keys = make_genesis(7, wallets=4)
    write_genesis(tmp_path / "genesis.json", genesis)
    write_history(tmp_path / "h.jsonl", genesis, keys, events=6000, seed=7)
    data = tmp_path / "data"
    init_chain(Config(data_dir=str(data), sync=False), genesis)
    real, chunks = Admitter._admit_chunk, []

    def failing_after_one(self: Any, numbers: list[int], *args: Any, **kwargs: Any) -> Any:
        chunks.append(numbers[0])
        if len(chunks) == 2:
            diskfaults.inject(errno.ENOSPC)
        return real(self, numbers, *args, **kwargs)
    monkeypatch.setattr(Admitter, "_admit_chunk", failing_after_one)
    monkeypatch.setattr("sys.argv", ["ledgerlog", "--data-dir", str(data), "ingest", str(tmp_path / "h.jsonl")])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = json.loads(capsys.readouterr().err)
    assert err["code"] == "STORAGE_UNAVAILABLE", err
    assert f"lines before line {chunks[1]} were admitted" in err["error"] and "again" in err["error"], err
