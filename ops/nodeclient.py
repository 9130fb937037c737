"""Talking to the node that runs on a data dir (its address is in ``<data_dir>/node.json``), so CLI
commands work, and read their writes, while the node holds the stores' locks."""
from __future__ import annotations

import json
import os
from typing import IO, Any, Iterator

import httpx

from engine.config import Config
from engine.errors import LedgerError, NotFoundError, StoreLockedError

__all__ = ["NodeClient"]


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
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
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
        return cls(info["url"])

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
        return r.json()

    def ingest(self, stream: IO[bytes]) -> dict[str, Any]:
        def chunks() -> Iterator[bytes]:
            while block := stream.read(1 << 20):
                yield block
        try:
            r = self._http.post("/v1/ingest", content=chunks(), timeout=None)
        except httpx.HTTPError as exc:
            raise LedgerError(f"node at {self.url} did not answer: {exc}") from exc
        if r.status_code not in (200, 422):
            raise LedgerError(f"node refused the ingest: HTTP {r.status_code} {r.text[:200]}")
        return r.json()

    def close(self) -> None:
        self._http.close()
