"""ledgerlog: an event-sourced ledger engine on Kafka-style logs.

Layers, each importing only those before it: ``ledgerlog.engine`` (log, codec, admission) <-
``ledgerlog.projections`` (pure folds) <- ``ledgerlog.streams`` (the runtime) <- ``ledgerlog.ops``
(CLI, node, HTTP API, tools). ``ledgerlog.schemas`` holds the Avro schemas."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ledgerlog")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
