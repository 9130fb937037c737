"""Talking to the node that runs on a data dir (its address is in ``<data_dir>/node.json``), so CLI
commands work, and read their writes, while the node holds the stores' locks.

``ingest`` streams a file of any size: it posts whole lines in chunks under the node's body cap
(``http.ingest_max_body``), one after another, each acknowledged once durable, and merges the
answers into one summary whose line numbers are the file's."""
from __future__ import annotations

import json
import os
import time
from typing import IO, Any, Iterator

import httpx

from engine.admission.admitter import Summary
from engine.config import Config
from engine.errors import LedgerError, NotFoundError, StoreLockedError

__all__ = ["CHUNK_BYTES", "NodeClient"]

#: Bytes of whole lines one ingest POST carries at most (less when the node's cap is lower).
CHUNK_BYTES = 8 * 1024 * 1024
_RETRIES = 20  # 429s waited out per chunk


def _pid_alive(pid: int) -> bool:
    if pid <= 0:  # kill(0, 0) would signal our own process group
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class NodeClient:
    def __init__(self, url: str, timeout: float = 30.0, ingest_max_body: int = Config().http_ingest_max_body,
                 data_dir: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.ingest_max_body = max(1024, ingest_max_body)
        self.data_dir = os.path.abspath(data_dir) if data_dir else None
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    @classmethod
    def find(cls, config: Config) -> "NodeClient | None":
        try:
            with open(config.node_file, encoding="utf-8") as f:
                info = json.load(f)
        except (OSError, ValueError):
            return None
        if not _pid_alive(int(info.get("pid", 0))):
            return None
        return cls(info["url"], ingest_max_body=config.http_ingest_max_body, data_dir=config.data_dir)

    @classmethod
    def for_data_dir(cls, config: Config) -> "NodeClient":
        client = cls.find(config)
        if client is None:
            raise StoreLockedError(f"{config.data_dir} is locked by another process and no node "
                                   "answers for it; wait for that process to finish")
        return client

    def _get(self, path: str, **params: Any) -> dict[str, Any]:
        try:
            r = self._http.get(path, params={k: v for k, v in params.items() if v is not None})
        except httpx.HTTPError as exc:
            raise LedgerError(f"node at {self.url} did not answer: {exc}") from exc
        body = r.json()
        if r.status_code == 404:
            raise NotFoundError(body.get("message", "not found"))
        if r.status_code == 400:  # the same error (and exit code) as without a node
            from .queries import bad_request
            raise bad_request(body.get("message", "bad request"))
        if r.status_code >= 400:
            raise LedgerError(body.get("message", f"HTTP {r.status_code}"))
        return body

    def status(self) -> dict[str, Any]:
        return self._get("/v1/status")

    def account(self, address: str, height: int | None = None) -> dict[str, Any]:
        return self._get(f"/v1/accounts/{address}", height=height)

    def block(self, height_or_hash: str) -> dict[str, Any]:
        return self._get(f"/v1/blocks/{height_or_hash}")

    def tx(self, txid: str) -> dict[str, Any]:
        return self._get(f"/v1/tx/{txid}")

    def worker(self, address: str) -> dict[str, Any]:
        return self._get(f"/v1/pool/workers/{address}")

    def provider(self, provider_id: str) -> dict[str, Any]:
        return self._get(f"/v1/energy/providers/{provider_id}")

    def admin(self, action: str, token: str, body: dict[str, Any] | None = None,
              timeout: float | None = None) -> Any:
        """POST /v1/admin/<action> with the bearer token; the action's JSON result."""
        try:
            r = self._http.post(f"/v1/admin/{action}", json=body or {}, timeout=timeout,
                                headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise LedgerError(f"node at {self.url} did not answer: {exc}") from exc
        if r.status_code >= 400:
            raise LedgerError(f"node refused admin {action}: HTTP {r.status_code} {r.text[:300]}")
        return self._local_paths(r.json())

    def _local_paths(self, value: Any) -> Any:
        """The node writes its data dir as ``<data_dir>`` (no absolute path in an answer); the
        operator's CLI on the same data dir prints the real path again."""
        if self.data_dir is None:
            return value
        if isinstance(value, str):
            return value.replace("<data_dir>", self.data_dir)
        if isinstance(value, dict):
            return {k: self._local_paths(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._local_paths(v) for v in value]
        return value

    def ingest(self, stream: IO[bytes]) -> dict[str, Any]:
        """Admit the lines of ``stream`` through the node, in chunks of whole lines (see the
        module docstring); the merged summary. A failure names the lines already admitted."""
        total = Summary()
        for first, lines, local in _chunks(stream, self.ingest_max_body):
            for part in self._post_lines(first, lines):
                total.merge(part)
            if local:  # lines too long for any request: rejected here, numbered as the file's
                total.merge(Summary(rejected=len(local), rejections=local))
        total.rejections.sort(key=lambda r: r["line"])
        return total.to_dict()

    def _post_lines(self, first: int, lines: list[bytes]) -> Iterator[Summary]:
        """POST ``lines`` (file lines ``first``..); halves them while the node answers 413."""
        answer = self._post(first, lines)
        if answer is not None:
            yield answer
            return
        if len(lines) < 2:
            raise LedgerError(f"node at {self.url} refused line {first} as too large (HTTP 413)")
        half = len(lines) // 2
        yield from self._post_lines(first, lines[:half])
        yield from self._post_lines(first + half, lines[half:])

    def _post(self, first: int, lines: list[bytes]) -> Summary | None:
        """One POST; its summary with file line numbers, or None on 413 (nothing was admitted)."""
        last = first + len(lines) - 1
        done = f"lines before {first} were admitted; run the ingest again to finish (admitted lines count as duplicates)"
        for _ in range(_RETRIES):
            try:
                r = self._http.post("/v1/ingest", content=b"".join(lines), timeout=None,
                                    headers={"Content-Type": "application/x-ndjson"})
            except httpx.HTTPError as exc:
                raise LedgerError(f"node at {self.url} did not answer for lines {first}-{last}: {exc}; {done}") from exc
            if r.status_code == 429:
                time.sleep(min(30.0, float(r.headers.get("retry-after", "1") or 1)))
                continue
            if r.status_code == 413:
                return None
            if r.status_code not in (200, 422):
                raise LedgerError(f"node refused lines {first}-{last}: HTTP {r.status_code} {r.text[:200]}; {done}")
            body = r.json()
            return Summary(accepted=body["accepted"], duplicates=body["duplicates"], rejected=body["rejected"],
                           rejections=[{**x, "line": x["line"] + first - 1} for x in body["rejections"]],
                           rejections_truncated=bool(body.get("rejections_truncated")))
        raise LedgerError(f"node kept answering 429 for lines {first}-{last}; {done}")

    def close(self) -> None:
        self._http.close()


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
