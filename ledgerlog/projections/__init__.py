"""Projections: pure, deterministic folds of log events into key-value state.

Each module declares NAME, VERSION, TOPICS, ``initial(genesis, txn)``, ``fold(genesis, events, txn)``
and read functions over a View; optionally FIELDS (topic -> dotted paths of the event fields its
fold reads), so the runtime decodes only those (and the event's height); optionally
SPLITS_BY_PARTITION with ``merge(parts)`` (a rebuild may then fold the log's partitions in parts,
in parallel, the first part from ``initial`` and the others from nothing, and ``merge`` yields
the state of one fold of them all from the parts' states); the built-ins also tell, by
``below(key, value, height)``, which of their entries hold history from below a height (what
the raw reads leave out after a prune). The runtime (streams/) owns reading, decoding, the
WriteBatch, positions and digests. Imports engine only.
"""
from . import balances, chainstate, energy, payouts

ALL = {m.NAME: m for m in (chainstate, balances, energy, payouts)}

__all__ = ["ALL", "balances", "chainstate", "energy", "payouts"]
