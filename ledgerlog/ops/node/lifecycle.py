"""The node: admission, the projection runner and the HTTP API in one process, and optionally the
simulated workload. Stops cleanly on SIGINT/SIGTERM: stop taking requests, drain the runner,
flush and fsync the stores, exit 0."""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
import uvicorn

from ledgerlog.engine import topics as T
from ledgerlog.engine.admission.rules import Out
from ledgerlog.engine.admission.state import Tip, WriteState
from ledgerlog.engine.chain import open_chain, write_atomic
from ledgerlog.engine.config import Config
from ledgerlog.engine.diskfaults import HEALTH
from ledgerlog.engine.errors import (
    LogError,
    PausedError,
    PrunedError,
    StorageError,
    StorageUnavailableError,
    UnavailableError,
)
from ledgerlog.ops.api.admin import allowed_networks
from ledgerlog.ops.api.app import create_app
from ledgerlog.ops.api.faucet import Faucet, FaucetSettings
from ledgerlog.ops.api.limits import Controls
from ledgerlog.ops.api.server import bind, listen, raise_open_files, uvicorn_server
from ledgerlog.ops.api.transport import EdgeSettings
from ledgerlog.ops.data.anchorupgrade import try_upgrade_anchor
from ledgerlog.ops.jobs import Jobs, Progress
from ledgerlog.ops.node.actions import ACTIONS
from ledgerlog.ops.node.metrics import NodeMetrics
from ledgerlog.ops.node.retention import retention_loop
from ledgerlog.ops.node.snapshots import SnapshotSchedule
from ledgerlog.ops.query.queries import Queries
from ledgerlog.projections import chainstate, payouts
from ledgerlog.streams.parallel import catch_up_parallel
from ledgerlog.streams.reproject import reproject
from ledgerlog.streams.runner import Runner

__all__ = ["Node"]

log = logging.getLogger("ledgerlog.node")

_MAX_BACKOFF = 5.0    # seconds between fold retries while storage errors repeat
_PROBE_SECONDS = 1.0  # how often an unwritable disk is probed
_STOP_LOCK_SECONDS = 60.0  # how long stop() waits for an admin action holding the projections
#: how long a stopping node lets requests under way finish (a 64 MiB ingest is admitted in ~20 s
#: on 2 cores); within systemd's default TimeoutStopSec (90 s)
GRACEFUL_SECONDS = 60.0
_ADMISSION_WAIT = 15.0  # then more for an admission the server's graceful stop gave up on
_SAMPLE_SECONDS = 0.2  # how often the dashboard's per-height samples are taken (ops/query/series.py)


class Node:
    def __init__(self, config: Config, *, simulate: bool = False, seed: int | None = None) -> None:
        self.config = config
        allowed_networks(config.admin_allow)  # a typo in admin.allow stops the node here
        from ledgerlog.ops.verify.checks import check_stores
        check_stores(config, mode="auto")  # never serve from a damaged store: refuse, say which file
        self.chain = open_chain(config)
        self.genesis = self.chain.genesis
        self.admitter = self.chain.admitter
        try:
            self.snapshots = SnapshotSchedule(config, self.chain)  # snapshot.every on a Kafka log: ConfigError
            try_upgrade_anchor(config, self.chain)  # a pruned log's anchor, up to this code's projections
            self.runner = Runner(self.chain.log, self.chain.codec, self.genesis, config.projections_dir,
                                 batch=config.fold_batch)
        except BaseException:
            self.chain.close()
            raise
        self.fold_lock = threading.Lock()
        stale = [n for n, h in self.runner.handles.items() if h.stale]
        if stale:  # code moved on: rebuild those (blue/green) rather than serve stale state
            log.info("projections %s were built by an older version; rebuilding", stale)
            try:
                self.reproject(stale, upgrade=False)  # (the anchor's upgrade was tried just above)
            except PrunedError as exc:  # the pruned history is not at hand: they answer NOT_READY, the rest serve
                log.error("projections %s cannot be rebuilt: %s", stale, exc)
        try:
            catch_up_parallel(self.runner, config.fold_processes)  # a first fold far behind uses every core
        except StorageUnavailableError as exc:  # a full disk: serve what was committed, fold on later
            log.error("projections cannot fold at start (%s); serving what they committed, folding on once the "
                      "disk takes writes", exc)
        self.instance = secrets.token_hex(16)  # who this node is: in node.json and GET /v1/status
        self.jobs = Jobs()  # long admin actions' progress, shown by GET /v1/status
        self.queries = Queries(self.runner, self.genesis.chain_id, self.instance, heads=self.chain.heads,
                               log_pubkey=self.chain.log_pubkey, syncing_lag=config.http_ready_max_lag,
                               jobs=self.jobs.to_dict)
        self.metrics = NodeMetrics(self)
        self.controls = Controls()  # run-time switches (pause, faucet pause); a restart starts unpaused
        self.actions = ACTIONS  # the admin actions (POST /v1/admin/<name>)
        self.faucet = Faucet(self, FaucetSettings.from_config(config))  # create_app may give it other settings
        self.simulate, self.seed = simulate, seed
        self.simulator: Any = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self.server: uvicorn.Server | None = None
        self.url: str | None = None
        self._closed = False
        self._admitting = 0  # HTTP ingests being admitted (stop closes the log only after them)
        self._admitting_done = threading.Condition()
        self.admitter.listeners.append(self._on_commit)

    # -- what the HTTP API and metrics read -----------------------------------------------------
    def tip(self) -> Tip:
        return WriteState(self.chain.log).tip()

    def mempool_size(self) -> int:
        return chainstate.mempool_size(self.runner.handles["chainstate"].store.view())

    def admit_numbered(self, lines: Iterable[tuple[int, bytes]], ids: bool = False) -> dict[str, Any]:
        """An ingest body, admitted (an ``external_write``)."""
        with self.external_write():
            return self.admitter.admit_numbered(lines, ids=ids).to_dict()

    @contextlib.contextmanager
    def external_write(self) -> Iterator[None]:
        """One write from outside (an ingest body, a faucet grant): refused once the node is
        stopping or ingest is paused, and counted, so that stop() and a pause wait for the ones
        under way (a body that was still arriving when the pause came is refused here)."""
        with self._admitting_done:
            if self._stop.is_set():
                raise UnavailableError("the node is stopping; send the lines again once it is back")
            if self.controls.ingest_paused:
                raise PausedError("ingest is paused by the operator")
            self._admitting += 1
        try:
            yield
        finally:
            with self._admitting_done:
                self._admitting -= 1
                self._admitting_done.notify_all()

    def external_writes_settled(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for the external writes under way; how many still run."""
        with self._admitting_done:
            self._admitting_done.wait_for(lambda: self._admitting == 0, timeout=timeout)
            return self._admitting

    def keys_rotated(self) -> None:
        """A role key file changed: the simulator and the tree heads sign with what the files hold now."""
        if self.simulator is not None:
            self.simulator.reload_keys()
        self.chain.reload_log_key()
        self.queries.log_pubkey = self.chain.log_pubkey

    def reproject(self, names: list[str] | None = None, *, keep: bool = True,
                  progress: Progress | None = None, upgrade: bool = True) -> list[dict[str, Any]]:
        """Rebuild beside the live stores while serving; pause folding only for the swap.
        ``upgrade``: first try the anchor's upgrade again (archives put back, a lock let go)."""
        if upgrade:
            try_upgrade_anchor(self.config, self.chain)
        return reproject(self.chain.log, self.chain.codec, self.genesis, self.config.projections_dir,
                         self.runner, names, keep=keep, swap_lock=self.fold_lock,
                         workers=self.config.fold_processes, progress=progress)

    def _on_commit(self, outs: list[Out]) -> None:
        for o in outs:
            if o.topic == T.BLOCKS:
                self.metrics.on_block(o.timestamp)
        self._wake.set()

    # -- background work ------------------------------------------------------------------------
    def _fold_loop(self) -> None:
        backoff = 0.0  # > 0 while storage errors repeat
        try:
            while not self._stop.is_set():
                try:
                    with self.fold_lock:
                        folded = self.runner.step()
                except (StorageError, LogError) as exc:  # a full or failing disk, an unreachable broker:
                    if not backoff:                       # retry, never stop the node
                        log.error("projections cannot fold (%s); retrying with backoff, reads go on", exc)
                    backoff = min(_MAX_BACKOFF, max(0.1, backoff * 2))
                    self._stop.wait(backoff)
                    continue
                if backoff:
                    log.info("projections commit again; folding resumed")
                    backoff = 0.0
                if folded == 0:
                    self._wake.wait(0.05)
                    self._wake.clear()
        except Exception:
            log.exception("projection runner failed; stopping the node")
            self._stop.set()
            if self.server:
                self.server.should_exit = True

    def health(self) -> dict[str, Any]:
        """GET /v1/health: liveness, so 200 even while the disk refuses writes or a projection is
        failed (a restart clears neither); ``status`` says ``degraded`` then, and what."""
        storage = self.storage_status()
        failed = self.queries.failed()
        return {"status": "ok" if storage["writable"] and not failed else "degraded",
                "chain_id": self.genesis.chain_id, "storage": storage, "failed_projections": failed}

    def storage_status(self) -> dict[str, Any]:
        """``writable`` false while the disk refuses writes (and why, without paths)."""
        return {"writable": HEALTH.writable, "faults": HEALTH.reasons()}

    def _storage_loop(self) -> None:
        """While the disk refuses writes, probe it and reopen the stopped stores once it takes
        them again, so writes resume (and readiness recovers) even with no write to try."""
        while not self._stop.wait(_PROBE_SECONDS):
            if HEALTH.writable:
                continue
            try:
                log_ = self.chain.log
                if not log_.writable:
                    log_.recover()
                with self.fold_lock:
                    for h in self.runner.handles.values():
                        if not h.store.writable:
                            h.store.recover()
            except StorageError:
                continue
            except Exception:  # a raw RocksDB error of the reopen: probe again, never die
                log.warning("storage probe: reopening failed; trying again", exc_info=True)
                continue
            if HEALTH.writable:
                log.info("storage is writable again")

    def _simulate(self) -> None:
        from ledgerlog.ops.devtools.simulator import Simulator

        def pool_pending() -> dict[str, int]:
            view = self.runner.handles["payouts"].store.view()
            return {w["address"]: w["pending"] for w in payouts.workers(view, 1000)}

        sim = self.simulator = Simulator(genesis=self.genesis, keys_dir=self.config.keys_dir,
                        submit=lambda lines: self.admitter.admit(lines),
                        state=lambda: WriteState(self.chain.log), pool_pending=pool_pending, seed=self.seed)
        try:
            sim.run(self._stop)
        except Exception:
            log.exception("simulator failed; the node keeps serving")

    def start(self) -> None:
        self._spawn("fold", self._fold_loop)
        self._spawn("storage", self._storage_loop)
        self._spawn("heads", self._heads_loop)
        self._spawn("samples", self._samples_loop)
        if self.snapshots.every:
            self._spawn("snapshots", lambda: self.snapshots.run(self, self._stop))
        if self.config.retention_keep_heights > 0:
            self._spawn("retention", lambda: retention_loop(self, self._stop))
        if self.simulate:
            self._spawn("simulate", self._simulate)

    def _heads_loop(self) -> None:
        """Publish the signed head of every partition that grew, each ``head_interval`` seconds
        (PROTOCOL.md §9); the last ones at the clean stop (Chain.close)."""
        heads = self.chain.heads
        while not self._stop.wait(self.config.head_interval):
            if not self.chain.log.writable:
                continue  # the disk refuses writes: the storage loop recovers it, heads follow
            try:
                heads.publish()
            except Exception:
                log.exception("could not publish tree heads; retrying")

    def _samples_loop(self) -> None:
        """Sample what the dashboard's series show per height but no projection keeps."""
        while not self._stop.wait(_SAMPLE_SECONDS):
            try:
                self.queries.sample()
            except Exception:  # a failed projection or a closing store: no sample this time
                log.debug("dashboard sample skipped", exc_info=True)

    def _spawn(self, name: str, target: Any) -> None:
        t = threading.Thread(target=target, name=f"ledgerlog-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    # -- serving --------------------------------------------------------------------------------
    def serve(self, host: str, port: int, sock: socket.socket | None = None) -> None:
        """Serve HTTP until SIGINT/SIGTERM (or ``request_stop``), then shut down cleanly; on
        ``sock`` when given (from ``bind``), else on a socket bound to ``host``:``port``."""
        try:
            sock = sock or bind(host, port)
            listen(sock, host, port)
        except BaseException:
            if sock is not None:
                sock.close()
            self.stop()
            raise
        bound = sock.getsockname()[1]
        self.url = f"http://{host if ':' not in host else '[' + host + ']'}:{bound}"
        self.server = uvicorn_server(create_app(self), EdgeSettings.from_config(self.config),
                                     keep_alive=self.config.http_keep_alive_timeout, graceful=GRACEFUL_SECONDS,
                                     on_refusal=self.metrics.on_request)
        raise_open_files(self.config.http_max_connections)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            write_atomic(self.config.node_file, orjson.dumps({"pid": os.getpid(), "url": self.url,
                                                              "instance": self.instance}))
            log.info("ledgerlog node for %s serving on %s", self.genesis.chain_id, self.url)
            self.server.run(sockets=[sock])
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            self.stop()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        self.request_stop()

    def request_stop(self) -> None:
        self._stop.set()
        if self.server:
            self.server.should_exit = True

    def stop(self) -> None:
        """Drain and close; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with self._admitting_done:  # (no new one starts once this is set: external_write)
            self._stop.set()
        if self.external_writes_settled(_ADMISSION_WAIT):
            log.warning("stop: an ingest is still being admitted after %s s more; closing the log under "
                        "it (what it appended before is kept; its client gets no answer)", _ADMISSION_WAIT)
        self._wake.set()
        for t in self._threads:
            t.join(timeout=30)
        self._threads.clear()
        # the last fold waits for a swap, a prune's catch-up or a compaction under way (an admin
        # action can outlive the server's graceful timeout): two folds in one store break its digest
        locked = self.fold_lock.acquire(timeout=_STOP_LOCK_SECONDS)
        try:
            if not locked:
                log.warning("stop: an admin action still holds the projections after %s s; not draining "
                            "them (the next start folds on from what they committed)", _STOP_LOCK_SECONDS)
            elif self.runner.handles:
                self.runner.catch_up()
                for h in self.runner.handles.values():
                    h.store.flush()
        except StorageError as exc:  # what was committed is in the stores' WALs; the next start folds on
            log.error("could not drain the projections at stop: %s", exc)
        finally:
            for close in (self.faucet.close, self.runner.close, self.metrics.shutdown, self.chain.close):
                try:
                    close()
                except StorageError as exc:
                    log.error("closing: %s", exc)
            if locked:  # released once the stores are closed: an action waiting for it finds them so
                self.fold_lock.release()
            try:
                if os.path.exists(self.config.node_file):
                    os.unlink(self.config.node_file)
            except OSError:
                pass
        log.info("ledgerlog node stopped")
