"""The sharded workers' consumer group: a faust app (streams/faust_worker.py ``lease_app``) on the
record-less lease topic, each partition of which leases one repartition partition (with its
state) or the deriving of one source partition (repartition.LeaseLayout). Kafka's group protocol hands each lease to one live member and moves
a dead member's after the session timeout; the engine follows the assignment."""
from __future__ import annotations

from typing import Any

from ledgerlog.engine.config import Config

from ..faust_worker import lease_app
from .engine import ShardEngine

__all__ = ["build_shard_app"]


def build_shard_app(config: Config, engine: ShardEngine, *, worker_dir: str, url: str,
                    session_timeout: float = 6.0) -> Any:
    """The app; ``app.ledgerlog_account_route(address)`` is the URL of the worker owning the
    address's shard (None while nobody does)."""
    names = engine.names
    app = lease_app(config, app_id=names.group, lease=names.leases, partitions=engine.leases,
                    assign=engine.assign_leases, revoke=engine.revoke_leases, failed=lambda: engine.error,
                    worker_dir=worker_dir, url=url, session_timeout=session_timeout)
    owner = app.ledgerlog_owner
    app.ledgerlog_account_route = lambda address: owner(engine.layout.of_shard(engine.shard_of(address)))
    app.ledgerlog_route = lambda name: None  # whole projections are not served in this mode
    return app
