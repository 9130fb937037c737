"""Projections: pure, deterministic folds of log events into key-value state.

Each module declares NAME, VERSION, TOPICS, ``initial(genesis, txn)``, ``fold(genesis, events, txn)``
and read functions over a View; optionally FIELDS (topic -> dotted paths of the event fields its
fold reads), so the runtime decodes only those (and the event's height); optionally SHARDABLE
(its state splits by a key into disjoint shards: ``initial`` and ``fold`` then take a ``shard``
and keep only what it owns, see base.Shard). The runtime (streams/) owns reading, decoding, the
WriteBatch, positions and digests. Imports engine only.
"""
from . import balances, chainstate, energy, payouts

ALL = {m.NAME: m for m in (chainstate, balances, energy, payouts)}

__all__ = ["ALL", "balances", "chainstate", "energy", "payouts"]
