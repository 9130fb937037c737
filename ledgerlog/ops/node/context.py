"""What a node's features and its HTTP edge need of a running node, as Protocols: they type
against these, not against ``Node`` (ops/node/lifecycle.py), so they import nothing of the node
that runs them, and a test may pass a stand-in."""
from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ledgerlog.engine.admission.admitter import Admitter
    from ledgerlog.engine.admission.state import Tip
    from ledgerlog.engine.chain import Chain
    from ledgerlog.engine.config import Config
    from ledgerlog.engine.genesis import Genesis
    from ledgerlog.ops.api.admin import Action
    from ledgerlog.ops.api.faucet import Faucet
    from ledgerlog.ops.api.limits import Controls
    from ledgerlog.ops.jobs import Jobs
    from ledgerlog.ops.node.metrics import NodeMetrics
    from ledgerlog.ops.node.snapshots import SnapshotSchedule
    from ledgerlog.ops.query.queries import Queries
    from ledgerlog.streams.runner import Runner

__all__ = ["ChainContext", "NodeContext"]


class ChainContext(Protocol):
    """A node's chain: its settings, log and admission (what the faucet and key rotation use)."""

    @property
    def config(self) -> Config: ...

    @property
    def chain(self) -> Chain: ...

    @property
    def genesis(self) -> Genesis: ...

    @property
    def admitter(self) -> Admitter: ...


class NodeContext(ChainContext, Protocol):
    """A running node: its projections (``fold_lock`` held while one is swapped or compacted),
    queries, metrics, switches, admin actions and faucet."""

    @property
    def runner(self) -> Runner: ...

    @property
    def fold_lock(self) -> threading.Lock: ...

    @property
    def queries(self) -> Queries: ...

    @property
    def metrics(self) -> NodeMetrics: ...

    @property
    def controls(self) -> Controls:
        """Run-time switches (pause, faucet pause), set by admin actions."""

    @property
    def actions(self) -> Mapping[str, Action]:
        """The admin actions table (ops/node/actions.py ``ACTIONS``)."""

    @property
    def jobs(self) -> Jobs:
        """Long admin actions' progress (``jobs`` in ``GET /v1/status``)."""

    faucet: Faucet  # replaced when an app is built with other faucet settings

    @property
    def snapshots(self) -> SnapshotSchedule:
        """Scheduled snapshots (``[snapshot] every``) and what the metrics say of snapshots."""

    @property
    def url(self) -> str | None: ...

    def health(self) -> dict[str, Any]: ...

    def storage_status(self) -> dict[str, Any]: ...

    def admit_numbered(self, lines: Iterable[tuple[int, bytes]], ids: bool = False) -> dict[str, Any]: ...

    def external_write(self) -> AbstractContextManager[None]: ...

    def external_writes_settled(self, timeout: float) -> int: ...

    def tip(self) -> Tip: ...

    def mempool_size(self) -> int: ...

    def keys_rotated(self) -> None: ...
