"""What the HTTP edge (ops/api/*) needs of a node: a Protocol, so the API is typed against these
attributes only, not the concrete Node (ops/node/lifecycle.py), and a test may pass a stand-in."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ledgerlog.engine.admission.admitter import Admitter
    from ledgerlog.engine.admission.state import Tip
    from ledgerlog.engine.chain import Chain
    from ledgerlog.engine.config import Config
    from ledgerlog.engine.genesis import Genesis
    from ledgerlog.streams.runner import Runner

    from ledgerlog.ops.api.admin import Action
    from ledgerlog.ops.api.limits import Controls
    from ledgerlog.ops.node.metrics import NodeMetrics
    from ledgerlog.ops.query.queries import Queries

__all__ = ["NodeContext"]


class NodeContext(Protocol):
    """A running node as the API sees it."""

    @property
    def config(self) -> Config: ...

    @property
    def genesis(self) -> Genesis: ...

    @property
    def chain(self) -> Chain: ...

    @property
    def admitter(self) -> Admitter: ...

    @property
    def runner(self) -> Runner: ...

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
    def url(self) -> str | None: ...

    def health(self) -> dict[str, Any]: ...

    def storage_status(self) -> dict[str, Any]: ...

    def admit_numbered(self, lines: Iterable[tuple[int, bytes]]) -> dict[str, Any]: ...

    def tip(self) -> Tip: ...
