"""What the node's features need of a running node, as Protocols: they type against these, not
against ``Node`` (ops/node/lifecycle.py), so they import nothing of the node that runs them."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ledgerlog.engine.admission.admitter import Admitter
    from ledgerlog.engine.admission.state import Tip
    from ledgerlog.engine.chain import Chain
    from ledgerlog.engine.config import Config
    from ledgerlog.engine.genesis import Genesis
    from ledgerlog.streams.runner import Runner

    from ledgerlog.ops.api.faucet import Faucet

__all__ = ["ChainContext", "NodeContext"]


class ChainContext(Protocol):
    """A node's chain: its settings, log and admission (what the faucet and key rotation use)."""

    config: Config
    chain: Chain
    genesis: Genesis
    admitter: Admitter


class NodeContext(ChainContext, Protocol):
    """A running node: its chain, its projections (``fold_lock`` held while one is swapped or
    compacted) and what its metrics read."""

    runner: Runner
    fold_lock: threading.Lock
    faucet: Faucet

    def tip(self) -> Tip: ...

    def mempool_size(self) -> int: ...

    def keys_rotated(self) -> None: ...
