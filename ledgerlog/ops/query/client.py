"""Talking to the node that runs on a data dir (its address is in ``<data_dir>/node.json``), so CLI
commands work, and read their writes, while the node holds the stores' locks; ``open_queries``
answers through that node when one runs, else from the local projections.

``ingest`` streams a file of any size: it posts whole lines in chunks under the node's body cap
(``http.ingest_max_body``), one after another, each acknowledged once durable, and merges the
answers into one summary whose line numbers are the file's."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import httpx

from ledgerlog.engine.admission.admitter import Summary
from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import (
    LedgerError,
    NodeRefusedError,
    NodeUnreachableError,
    PrunedError,
    SchemaError,
    StoreLockedError,
    error_class_for,
)
from ledgerlog.engine.procs import alive
from ledgerlog.ops.data.anchorupgrade import try_upgrade_anchor
from ledgerlog.ops.query.queries import Queries
from ledgerlog.streams.parallel import catch_up_parallel
from ledgerlog.streams.reproject import reproject
from ledgerlog.streams.runner import Runner

__all__ = ["CHUNK_BYTES", "NodeClient", "NodeRefusedError", "node_error", "open_queries"]

#: Bytes of whole lines one ingest POST carries at most (less when the node's cap is lower).
CHUNK_BYTES = 8 * 1024 * 1024
_RETRIES = 20  # 429s waited out per chunk

log = logging.getLogger("ledgerlog.query")


def _forget(path: str, seen: bytes) -> None:
    """Remove the stale node.json at ``path`` if it still holds what was read (not a new node's)."""
    try:
        with open(path, "rb") as f:
            if f.read() != seen:
                return
        os.unlink(path)
    except OSError:
        pass


def node_error(what: str, r: httpx.Response) -> LedgerError:
    """The error a node's error answer stands for: the table's class of its code (so the CLI
    reports and exits as it would without a node), else NodeRefusedError carrying the code."""
    try:
        body = r.json()
        code, message = str(body["code"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"HTTP_{r.status_code}", r.text[:300]
    cls = error_class_for(code)
    text = f"{what}: {message}" if what else message
    if cls is not None and cls.__init__ is Exception.__init__:  # a plain-message class
        return cls(text)
    return NodeRefusedError(text, code)


class NodeClient:
    def __init__(self, url: str, timeout: float = 30.0, ingest_max_body: int = Config().http_ingest_max_body,
                 data_dir: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.ingest_max_body = max(1024, ingest_max_body)
        self.data_dir = os.path.abspath(data_dir) if data_dir else None
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    @classmethod
    def find(cls, config: Config) -> NodeClient | None:
        """The node node.json names, if the node answering at its URL is that one (the same
        ``instance`` in ``GET /v1/status``); else None: no node runs. A node.json shown stale
        (its PID gone, nothing listening at its URL, another node there) is removed."""
        try:
            with open(config.node_file, "rb") as f:
                raw = f.read()
            info = json.loads(raw)
            pid, url, instance = int(info.get("pid", 0)), str(info["url"]), info.get("instance")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        if not alive(pid):
            _forget(config.node_file, raw)
            return None
        client = cls(url, ingest_max_body=config.http_ingest_max_body, data_dir=config.data_dir)
        try:
            r = client._http.get("/v1/status", timeout=httpx.Timeout(15.0, connect=2.0))
            answered = r.json().get("instance") if r.status_code == 200 else None
        except httpx.ConnectError:  # a node listens before it writes node.json: none runs there
            answered = None
        except (httpx.HTTPError, ValueError, AttributeError):  # busy or odd: not ours, maybe not stale
            client.close()
            return None
        if instance and answered == instance:
            return client
        client.close()
        if instance:  # (a node.json without an instance is an older node's: leave it)
            _forget(config.node_file, raw)
        return None

    @classmethod
    def for_data_dir(cls, config: Config) -> NodeClient:
        client = cls.find(config)
        if client is None:
            raise StoreLockedError(f"{config.data_dir} is locked by another process and no node "
                                   "answers for it; wait for that process to finish")
        return client

    def _get(self, path: str, **params: Any) -> dict[str, Any]:
        try:
            r = self._http.get(path, params={k: v for k, v in params.items() if v is not None})
        except httpx.HTTPError as exc:
            raise NodeUnreachableError(f"node at {self.url} did not answer: {exc}") from exc
        if r.status_code >= 400:  # the same error (and exit code) as without a node
            raise node_error("", r)
        return r.json()

    def status(self) -> dict[str, Any]:
        return self._get("/v1/status")

    def account(self, address: str, height: int | None = None) -> dict[str, Any]:
        return self._get(f"/v1/accounts/{address}", height=height)

    def block(self, height_or_hash: str) -> dict[str, Any]:
        return self._get(f"/v1/blocks/{height_or_hash}")

    def tx(self, txid: str) -> dict[str, Any]:
        return self._get(f"/v1/tx/{txid}")

    def tx_proof(self, txid: str) -> dict[str, Any]:
        return self._get(f"/v1/tx/{txid}/proof")

    def inclusion_proof(self, topic: str | None = None, partition: int | None = None, index: int | None = None,
                        offset: int | None = None, tree_size: int | None = None) -> dict[str, Any]:
        return self._get("/v1/proofs/inclusion", topic=topic, partition=partition, index=index, offset=offset,
                         tree_size=tree_size)

    def consistency_proof(self, topic: str | None = None, partition: int | None = None,
                          first: int | None = None, second: int | None = None) -> dict[str, Any]:
        return self._get("/v1/proofs/consistency", topic=topic, partition=partition, first=first, second=second)

    def tree_head(self, topic: str | None = None, partition: int | None = None) -> dict[str, Any]:
        return self._get("/v1/tree-heads", topic=topic, partition=partition)

    def projections(self) -> dict[str, Any]:
        return self._get("/v1/projections")

    def projection_entry(self, name: str, key: str) -> dict[str, Any]:
        return self._get(f"/v1/projections/{name}/keys/{key}")

    def projection_page(self, name: str, prefix: str | None = None, start: str | None = None,
                        limit: int | None = None) -> dict[str, Any]:
        return self._get(f"/v1/projections/{name}", prefix=prefix, start=start, limit=limit)

    def worker(self, address: str) -> dict[str, Any]:
        return self._get(f"/v1/pool/workers/{address}")

    def provider(self, provider_id: str, height: int | None = None) -> dict[str, Any]:
        return self._get(f"/v1/energy/providers/{provider_id}", height=height)

    def providers(self, limit: int | None = None, after: str | None = None,
                  height: int | None = None) -> dict[str, Any]:
        return self._get("/v1/energy/providers", limit=limit, after=after, height=height)

    def market(self, height: int | None = None) -> dict[str, Any]:
        return self._get("/v1/energy/market", height=height)

    def governance(self, height: int | None = None) -> dict[str, Any]:
        return self._get("/v1/energy/governance", height=height)

    def admin(self, action: str, token: str, body: dict[str, Any] | None = None,
              timeout: float | None = None) -> Any:
        """POST /v1/admin/<action> with the bearer token; the action's JSON result."""
        try:
            r = self._http.post(f"/v1/admin/{action}", json=body or {}, timeout=timeout,
                                headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise NodeUnreachableError(f"node at {self.url} did not answer: {exc}") from exc
        if r.status_code >= 400:
            raise node_error(f"node refused admin {action}", r)
        answer = r.json()
        return answer if self.data_dir is None else local_paths(answer, self.data_dir)

    def ingest(self, stream: IO[bytes], ids: bool = False,
               progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Admit the lines of ``stream`` through the node, in chunks of whole lines (see the
        module docstring); the merged summary (with ``ids``, the admitted ids). A failure names
        the lines already admitted. ``progress(n)``: after each chunk, the lines it held."""
        total = Summary(ids=[] if ids else None)
        for first, lines, local in _chunks(stream, self.ingest_max_body):
            for part in self._post_lines(first, lines, ids):
                total.merge(part)
            if local:  # lines too long for any request: rejected here, numbered as the file's
                total.merge(Summary(rejected=len(local), rejections=local))
            if progress is not None:
                progress(len(lines))
        total.rejections.sort(key=lambda r: r["line"])
        return total.to_dict()

    def _post_lines(self, first: int, lines: list[bytes], ids: bool) -> Iterator[Summary]:
        """POST ``lines`` (file lines ``first``..); halves them while the node answers 413."""
        answer = self._post(first, lines, ids)
        if answer is not None:
            yield answer
            return
        if len(lines) < 2:  # the node's cap is below this CLI's (its settings differ): the line is refused
            yield Summary(rejected=1, rejections=[{"line": first, "code": "MALFORMED", "message":
                                                  "line is over the node's request limit (http.ingest_max_body)"}])
            return
        half = len(lines) // 2
        yield from self._post_lines(first, lines[:half], ids)
        yield from self._post_lines(first + half, lines[half:], ids)

    def _post(self, first: int, lines: list[bytes], ids: bool) -> Summary | None:
        """One POST; its summary with file line numbers, or None on 413 (nothing was admitted)."""
        last = first + len(lines) - 1
        done = f"lines before {first} were admitted; run the ingest again to finish (admitted lines count as duplicates)"
        for _ in range(_RETRIES):
            try:
                r = self._http.post("/v1/ingest", content=b"".join(lines), timeout=None,
                                    params={"ids": "true"} if ids else None,
                                    headers={"Content-Type": "application/x-ndjson"})
            except httpx.HTTPError as exc:
                raise NodeUnreachableError(f"node at {self.url} did not answer for lines {first}-{last}: {exc}; {done}") from exc
            if r.status_code == 429:
                time.sleep(min(30.0, float(r.headers.get("retry-after", "1") or 1)))
                continue
            if r.status_code == 413:
                return None
            if r.status_code not in (200, 422):
                raise node_error(f"node refused lines {first}-{last} ({done})", r)
            body = r.json()
            return Summary(accepted=body["accepted"], duplicates=body["duplicates"], rejected=body["rejected"],
                           rejections=[{**x, "line": x["line"] + first - 1} for x in body["rejections"]],
                           rejections_truncated=bool(body.get("rejections_truncated")),
                           ids=[{**x, "line": x["line"] + first - 1} for x in body["ids"]] if ids else None)
        raise NodeRefusedError(f"node kept answering 429 for lines {first}-{last}; {done}", "RATE_LIMITED")

    def close(self) -> None:
        self._http.close()


def local_paths(value: Any, data_dir: str) -> Any:
    """``value`` with ``<data_dir>`` written as ``data_dir``: the node (and prune and export) name
    the data dir so, with no absolute path in an answer; at the command line the real path serves."""
    if isinstance(value, str):
        return value.replace("<data_dir>", data_dir) if "<data_dir>" in value else value
    if isinstance(value, dict):
        return {k: local_paths(v, data_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [local_paths(v, data_dir) for v in value]
    return value


def _chunks(stream: IO[bytes], cap: int) -> Iterator[tuple[int, list[bytes], list[dict[str, Any]]]]:
    """(first line number, whole lines of at most ``min(cap, CHUNK_BYTES)`` bytes together, the
    rejections of lines longer than ``cap``). Such a line is sent as an empty line, so the node's
    numbering stays the file's; a line over the chunk size but within ``cap`` goes alone."""
    target = min(cap, CHUNK_BYTES)
    first, number, size = 1, 0, 0
    lines: list[bytes] = []
    local: list[dict[str, Any]] = []
    while True:
        line = stream.readline(cap + 1)
        if not line:
            break
        number += 1
        if not line.endswith(b"\n"):
            if len(line) > cap:  # over-long: skip the rest of it
                while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass
            line += b"\n"  # (or the last line, without a newline)
        if len(line) > cap:
            local.append({"line": number, "code": "MALFORMED",
                          "message": f"line is over the node's {cap} byte request limit (http.ingest_max_body)"})
            line = b"\n"
        if lines and size + len(line) > target:
            yield first, lines, local
            first, lines, local, size = number, [], [], 0
        lines.append(line)
        size += len(line)
    if lines or local:
        yield first, lines, local


@contextlib.contextmanager
def open_queries(config: Config) -> Iterator[Any]:
    """Queries for a CLI command: through the running node if there is one; otherwise fold the
    projections up to the end of the log first (read-your-writes), never failing on a lock."""

    remote = NodeClient.find(config)
    if remote is not None:
        yield remote
        return
    chain = _open_upgraded(config)
    try:
        try_upgrade_anchor(config, chain)  # a pruned log's anchor, up to this code's projections
        runner = _open_runner(chain, config)
        try:
            if not runner.read_only:
                stale = [n for n, h in runner.handles.items() if h.stale]
                if stale:  # built by older projection code: rebuild (blue/green) before answering
                    try:
                        reproject(chain.log, chain.codec, chain.genesis, config.projections_dir, runner, stale,
                                  serving=False)  # before any query
                    except PrunedError as exc:  # the pruned history is not at hand: they answer NOT_READY
                        log.warning("projections %s cannot be rebuilt: %s", stale, exc)
                catch_up_parallel(runner, config.fold_processes)  # a first fold far behind uses every core
            yield Queries(runner, chain.genesis.chain_id, heads=chain.heads, log_pubkey=chain.log_pubkey,
                          syncing_lag=config.http_ready_max_lag)
        finally:
            runner.close()
    finally:
        chain.close()


def _open_upgraded(config: Config) -> Any:
    """The chain read-only, after one writable open if an older version made it (topics or schemas
    this version adds are missing: the writable open adds them, as a node's start would)."""
    from ledgerlog.engine.chain import open_chain
    from ledgerlog.engine.topics import RECORD_SCHEMA, subject_of

    try:
        chain = open_chain(config, read_only=True)
    except SchemaError:
        chain = None
    if chain is not None:
        topics = chain.log.topics()
        registry = chain.codec.registry
        if (all(t in topics for t in config.topic_partitions())
                and all(registry.latest(subject_of(t)) is not None for t in RECORD_SCHEMA)):
            return chain
        chain.close()
    try:
        open_chain(config).close()
    except StoreLockedError as exc:
        raise SchemaError(f"{config.data_dir} was made by an older ledgerlog and another process holds it; "
                          "start the node (or run the command again once that process is done) so this "
                          "version can add its topics and schemas") from exc
    return open_chain(config, read_only=True)


def _open_runner(chain: Any, config: Config) -> Runner:
    deadline = time.monotonic() + 10
    while True:
        try:
            return Runner(chain.log, chain.codec, chain.genesis, config.projections_dir, batch=config.fold_batch)
        except StoreLockedError:
            if time.monotonic() > deadline:  # someone keeps folding them: read what they hold
                return Runner(chain.log, chain.codec, chain.genesis, config.projections_dir, read_only=True)
            time.sleep(0.1)
