"""Ad-hoc replay for notebooks: fold any projection module over a data dir's log, up to a height,
into a scratch directory, and read the result (docs/PROJECTIONS.md has a pandas example).

    from ledgerlog.ops.notebook import replay
    with replay("tx_count", "./data", height=500) as view:
        df = view.to_pandas()

The fold is the runner's (the same batches, digests and positions as ``reproject``), so a replay's
``digest`` equals the node's for the same records. Nothing in the data dir is written: the log is
opened read-only (beside a running node too) and the store lives in the scratch directory."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from ledgerlog import projections
from ledgerlog.engine.chain import open_chain
from ledgerlog.engine.config import load_config
from ledgerlog.engine.errors import BadRequest, ProjectionFailedError
from ledgerlog.ops.cli.progress import notebook_bar
from ledgerlog.ops.data.prune import first_at_height
from ledgerlog.ops.query.userviews import key_text, value_of
from ledgerlog.streams import catalog
from ledgerlog.streams.runner import Runner

__all__ = ["Replayed", "replay"]


class Replayed:
    """A projection folded by ``replay``: read it by key, as a dict or a pandas DataFrame."""

    def __init__(self, runner: Runner, name: str, scratch: str, owned: bool, height: int | None) -> None:
        self._runner, self.name, self.path, self._owned = runner, name, scratch, owned
        handle = runner.handles[name]
        self._store = handle.store
        self.version: int = handle.module.VERSION
        self.height: int = self._store.height if height is None else height  # as asked, or the log's
        self.events: int = handle.events
        self.digest: str = self._store.digest_hex()
        self.positions = runner.positions(name)

    def get(self, key: bytes | str) -> bytes | None:
        raw = key.encode() if isinstance(key, str) else key
        return None if raw[:1] == b"\x00" else self._store.view().get(raw)

    def items(self, prefix: bytes | str = b"", start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) in key order, the store's own keys left out."""
        pre = prefix.encode() if isinstance(prefix, str) else prefix
        for k, v in self._store.view().items(pre, start if start is not None or pre else b"\x01"):
            if k[:1] != b"\x00":
                yield k, v

    def to_dict(self, prefix: bytes | str = b"") -> dict[str, Any]:
        """key text -> value (JSON values decoded, others hex), as the HTTP API shows them."""
        return {key_text(k): value_of(v)["value"] for k, v in self.items(prefix)}

    def to_pandas(self, prefix: bytes | str = b"") -> Any:
        """A DataFrame of key, value (decoded as in ``to_dict``); needs pandas installed."""
        import pandas as pd  # a data team's notebook has it; ledgerlog does not depend on it
        return pd.DataFrame([{"key": k, "value": v} for k, v in self.to_dict(prefix).items()])

    def close(self) -> None:
        self._runner.close()
        if self._owned:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Replayed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _module(projection: str | ModuleType | Any) -> ModuleType:
    if isinstance(projection, str):
        if projection in projections.ALL:
            return projections.ALL[projection]
        return catalog.load(projection)[0]
    return catalog.adapt(projection, getattr(projection, "__name__", type(projection).__name__))


def replay(projection: str | ModuleType | Any, data_dir: str = "./data", *, height: int | None = None,
           scratch: str | None = None, progress: bool = True, batch: int = 20_000) -> Replayed:
    """Fold ``projection`` (a built-in's name, a module name or ``.py`` file, or a module or
    object with NAME, VERSION, TOPICS and fold) over the log of ``data_dir``, up to the events of
    ``height`` (default: all), into ``scratch`` (default: a temporary directory removed on close)."""
    mod = _module(projection)
    if height is not None and (not isinstance(height, int) or height < 0):
        raise BadRequest(f"height must be a non-negative integer, not {height!r}")
    owned = scratch is None
    where = scratch or tempfile.mkdtemp(prefix=f"ledgerlog-replay-{mod.NAME}-")
    chain = open_chain(load_config(data_dir, os.environ, {}), read_only=True)  # its config.toml: a Kafka chain too
    try:
        log, codec = chain.log, chain.codec
        until = {t: log.end_offsets(t) for t in mod.TOPICS}
        if height is not None:
            until = {t: [first_at_height(log, codec, t, p, s, e, height + 1)
                         for p, (s, e) in enumerate(zip(log.start_offsets(t), ends))] for t, ends in until.items()}
        runner = Runner(log, codec, chain.genesis, os.path.join(where, "projections"), names=[mod.NAME],
                        modules={mod.NAME: mod}, batch=batch)
        try:
            total = sum(sum(v) for v in until.values())
            with notebook_bar(f"replay {mod.NAME}", total=total, unit=" events", quiet=not progress) as bar:
                runner.catch_up(until=until, progress=bar)
            failed = runner.failures()
            if failed:
                raise ProjectionFailedError(failed[mod.NAME].message)
            return Replayed(runner, mod.NAME, where, owned, height)
        except BaseException:
            runner.close()
            raise
    except BaseException:
        if owned:
            shutil.rmtree(where, ignore_errors=True)
        raise
    finally:
        chain.close()
