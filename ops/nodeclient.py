"""Talking to the node that runs on a data dir (its address is in ``<data_dir>/node.json``), so CLI
commands work, and read their writes, while the node holds the stores' locks."""
from __future__ import annotations

import json
import os
from typing import IO, Any, Iterator

import httpx

from engine.config import Config
from engine.errors import LedgerError, NotFoundError, StoreLockedError

__all__ = ["NodeClient", "NodeRefusedError"]


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


def _forget(path: str, seen: bytes) -> None:
    """Remove the stale node.json at ``path`` if it still holds what was read (not a new node's)."""
    try:
        with open(path, "rb") as f:
            if f.read() != seen:
                return
        os.unlink(path)
    except OSError:
        pass


class NodeRefusedError(LedgerError):
    """The node answered an error; ``code`` is the code it gave (e.g. REPROJECT_RUNNING)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code

    @classmethod
    def of(cls, what: str, r: httpx.Response) -> "NodeRefusedError":
        try:
            body = r.json()
            code, message = str(body["code"]), str(body["message"])
        except (ValueError, KeyError, TypeError):
            code, message = f"HTTP_{r.status_code}", r.text[:300]
        return cls(f"{what}: {message}", code)


class NodeClient:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    @classmethod
    def find(cls, config: Config) -> "NodeClient | None":
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
        if not _pid_alive(pid):
            _forget(config.node_file, raw)
            return None
        client = cls(url)
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
            raise NodeRefusedError.of(f"node refused admin {action}", r)
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
