"""Signed tree heads (PROTOCOL.md §9): the log key, making and checking heads, and publishing the
head of every partition that grew on ``_checkpoints``.

A head is a ``TreeHead`` signed with Ed25519 over its canonical body bytes by the log key
(``<keys_dir>/log.key``); published as a ``SignedTreeHead`` keyed ``"<topic>/<partition>"``.
Per partition, published tree sizes never decrease: the publisher starts from the newest head
already on ``_checkpoints`` and publishes a partition only when its tree grew past it.

On Kafka, heads are published in a transaction of their own (``publish`` is one append), after
the transactions of the records they cover have committed: the trees follow committed records
only (engine/log/kafka_trees.py), and ``publish`` first catches them up to what the log holds
(``Log.catch_up_trees``), so a head never covers a record a read_committed reader cannot see.
The records' own transaction cannot carry their head: the leaves are fixed only once it commits
(commit markers and any other writer's records take offsets, known after the commit), and heads
are made per interval and at a clean stop, not per append.

Finding each partition's newest head means folding ``_checkpoints`` from its start, checking every
head's signature: ~50 µs a head, so minutes per open once a busy chain has published millions.
A writer therefore keeps a cache of that fold (``heads-cache.json`` in the data dir: the offset it
reached, the hash of the record before it, the newest heads with their offsets, the current key's
first head), and an open resumes from there. The cache is only a shortcut: an open takes it only
when the record it names is still on the log with the same bytes, and each head it names is the
record at its offset and passes the fold's checks there (this chain's, its partition's key, a log
key's signature, within the tree, no retired key after the current one's first); otherwise
(another log, a restore, a damaged file) it folds from the start, as without one. (A cache put
back with older genuine heads would have them taken as the newest until the next publish: the
file is the writer's own, 0600, beside the keys.)"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from . import avro
from .codec import Codec
from .errors import LedgerError, ProofError
from .files import write_atomic
from .log.base import Log, Record
from .logtree import TreeState, has_tree
from .signing import Signer
from .topics import CHECKPOINTS

logger = logging.getLogger("ledgerlog.treehead")

__all__ = ["LOG_KEY", "log_key_path", "load_log_key", "head_key", "make_head", "sign_head",
           "check_head_signature", "HeadPublisher"]

#: The log key's file name under the keys dir.
LOG_KEY = "log"
#: A writer rewrites its heads cache at most this often (and at a clean close).
CACHE_SECONDS = 30.0
_CACHE_VERSION = 2


def log_key_path(keys_dir: str) -> str:
    return os.path.join(keys_dir, f"{LOG_KEY}.key")


def load_log_key(keys_dir: str, *, create: bool) -> Signer | None:
    """The node's log key; made (0600) when missing and ``create``, else None when missing."""
    path = log_key_path(keys_dir)
    if not os.path.exists(path):
        if not create:
            return None
        os.makedirs(keys_dir, mode=0o700, exist_ok=True)
        write_atomic(path, Signer.generate().to_json(LOG_KEY).encode(), mode=0o600)
    return Signer.load(path)


def head_key(topic: str, partition: int) -> bytes:
    return f"{topic}/{partition}".encode()


def make_head(chain_id: str, topic: str, partition: int, state: TreeState, timestamp: int) -> dict[str, Any]:
    return {"chain_id": chain_id, "topic": topic, "partition": partition, "tree_size": state.size,
            "root_hash": state.root().hex(), "timestamp": timestamp}


def sign_head(signer: Signer, head: dict[str, Any]) -> dict[str, Any]:
    """A SignedTreeHead: the head and the log key's signature over its canonical bytes."""
    return {"head": head, "pubkey": signer.pubkey,
            "signature": signer.key.sign(avro.encode("TreeHead", head)).signature.hex()}


def check_head_signature(signed: dict[str, Any], pubkeys: Iterable[str]) -> None:
    """Raise ProofError unless a key of ``pubkeys`` signed the head."""
    pub = signed.get("pubkey", "")
    if pub not in set(pubkeys):
        raise ProofError(f"tree head signed by {pub[:16]}..., which is not a log key of this chain")
    try:
        VerifyKey(bytes.fromhex(pub)).verify(avro.encode("TreeHead", signed["head"]),
                                              bytes.fromhex(signed["signature"]))
    except (BadSignatureError, ValueError) as exc:
        raise ProofError("tree head signature does not verify") from exc


class HeadPublisher:
    """Publishes the signed head of each partition whose tree grew since its last head; without
    a ``signer`` (a reader's open) it only reads the published heads."""

    def __init__(self, log: Log, codec: Codec, chain_id: str, signer: Signer | None,
                 log_keys: Callable[[], Iterable[str]] = lambda: (),
                 key_now: Callable[[], str | None] = lambda: None, cache: str | None = None) -> None:
        """``log_keys``: the keys that have held the chain's log role (the writer's own is one);
        ``key_now``: the one that holds it now (a reader's; a writer's is its signer's);
        ``cache``: the heads cache's path (a writer keeps it, any open starts from it)."""
        self.log, self.codec, self.chain_id, self.signer = log, codec, chain_id, signer
        self._log_keys = log_keys
        self._key_now = key_now
        self._lock = threading.RLock()
        #: (topic, partition) -> the newest head on _checkpoints (SignedTreeHead)
        self.latest: dict[tuple[str, int], dict[str, Any]] = {}
        #: heads this process published
        self.published = 0
        self._read_to = 0
        self._last_hash = ""  # sha256 of the value of the record at _read_to - 1
        self._at: dict[tuple[str, int], int] = {}  # _checkpoints offset of each head in ``latest``
        #: (the signer's key, the _checkpoints offset of its first head): after it, another
        #: (retired) log key's head is not this chain's newest (a leaked key is why one rotates)
        self._signer_from: tuple[str, int] | None = None
        self._cache = cache
        self._saved = (0, float("-inf"))  # (_read_to, monotonic time) of the last save
        if cache is not None and CHECKPOINTS in log.topics():
            self._load(cache)
        #: where this open's fold of _checkpoints started (0 without a usable cache)
        self.read_from = self._read_to
        self.refresh()

    def refresh(self) -> None:
        """Fold heads appended to ``_checkpoints`` since the last look (by anyone). Only heads of
        this chain, under their partition's key, signed by one of its log keys count: a forged
        head (on a Kafka cluster anyone allowed to write the topic can append one, of any size)
        must neither be served nor stop this node from publishing, nor one of a retired key after
        the current key's first, nor one larger than the log's own tree (signed by a leaked key,
        it stopped the heads of its partition for good: none was due until the tree outgrew it)."""
        if CHECKPOINTS not in self.log.topics():
            return
        with self._lock:
            keys: set[str] | None = None
            mine = self._mine()
            for rec in self.log.scan(CHECKPOINTS, 0, self._read_to):
                self._read_to, self._last_hash = rec.offset + 1, _hash(rec.value)
                try:
                    signed = self.codec.decode(CHECKPOINTS, rec.value)
                except Exception:  # noqa: BLE001 - a foreign record is the auditor's business, not ours
                    continue
                if keys is None:
                    keys = self._keys()
                try:
                    self._check(signed, rec.key, keys)
                    self._no_retired_key(signed["pubkey"], rec.offset, mine)
                except ProofError as exc:
                    logger.warning("ignoring the tree head at %s[%s] offset %s: %s (an auditor's `ledgerlog audit` "
                                   "reports it)", CHECKPOINTS, 0, rec.offset, exc)
                    continue
                tp = (signed["head"]["topic"], signed["head"]["partition"])
                have = self.latest.get(tp)
                if have is None or signed["head"]["tree_size"] >= have["head"]["tree_size"]:
                    self.latest[tp], self._at[tp] = signed, rec.offset

    def _mine(self) -> str | None:
        return self.signer.pubkey if self.signer else self._key_now()

    def _keys(self) -> set[str]:
        return set(self._log_keys()) | ({self.signer.pubkey} if self.signer else set())

    def _check(self, signed: dict[str, Any], key: bytes | None, keys: set[str]) -> None:
        """ProofError unless ``signed`` is this chain's head, under its partition's ``key``,
        signed by one of ``keys``, and within the log's tree."""
        head = signed["head"]
        tp = (head["topic"], head["partition"])
        if head["chain_id"] != self.chain_id or key != head_key(*tp):
            raise ProofError("not this chain's head of that partition")
        check_head_signature(signed, keys)
        self._within_tree(*tp, head["tree_size"])

    # -- the cache -------------------------------------------------------------------------------
    def _load(self, path: str) -> None:
        """Resume from the cache at ``path`` if it still describes this log; else start at 0."""
        try:
            with open(path, "rb") as f:
                doc = orjson.loads(f.read())
            if doc["version"] != _CACHE_VERSION or doc["chain_id"] != self.chain_id:
                return
            read_to, last_hash = doc["read_to"], doc["last_hash"]
            last = self._record(read_to - 1) if isinstance(read_to, int) and read_to > 0 else None
            if last is None or _hash(last.value) != last_hash:
                return  # another log, or a restored one that does not reach that far
            mine, keys = self._mine(), self._keys()
            signer_from = None
            if doc["signer_from"] is not None:
                key, at = doc["signer_from"]
                if mine is not None and key != mine:
                    return  # made before the key now in use signed: its first head is not known
                if self._cached_head(at, read_to, keys).get("pubkey") != key:
                    raise ProofError(f"no head of {str(key)[:16]}... at {at}")
                signer_from = (key, at)
            latest, at_offset = {}, {}
            for at, signed in doc["latest"]:
                if self._cached_head(at, read_to, keys) != signed:
                    raise ProofError(f"the head at {at} is not the one on the log")
                if mine is not None and signed["pubkey"] != mine and signer_from is not None and at > signer_from[1]:
                    raise ProofError(f"the head at {at} is signed by a retired log key after the current key's first")
                tp = (signed["head"]["topic"], signed["head"]["partition"])
                latest[tp], at_offset[tp] = signed, at
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ProofError, LedgerError) as exc:
            logger.info("not using the tree heads cache %s (%s): reading every head", path, exc)
            return
        self.latest, self._at, self._read_to, self._last_hash = latest, at_offset, read_to, last_hash
        self._signer_from = signer_from
        self._saved = (read_to, time.monotonic())

    def _record(self, offset: int) -> Any:
        recs = self.log.read(CHECKPOINTS, 0, offset, 1)
        return recs[0] if recs and recs[0].offset == offset else None

    def _cached_head(self, offset: Any, read_to: int, keys: set[str]) -> dict[str, Any]:
        """The head the log holds at ``offset`` (below ``read_to``), checked as a fold checks it."""
        rec = self._record(offset) if isinstance(offset, int) and 0 <= offset < read_to else None
        if rec is None:
            raise ProofError(f"no record at {offset}")
        signed: dict[str, Any] = self.codec.decode(CHECKPOINTS, rec.value)
        self._check(signed, rec.key, keys)
        return signed

    def save(self, *, force: bool = False) -> None:
        """Write the cache (a writer's; at most every CACHE_SECONDS unless ``force``): a cache
        is a shortcut, so a failed write only logs."""
        if self._cache is None or self.signer is None:
            return
        with self._lock:
            if not force and time.monotonic() - self._saved[1] < CACHE_SECONDS:
                return
            self.refresh()  # what our own heads' fast path did not cover (another writer's, Kafka's markers)
            if not self._read_to or self._saved[0] == self._read_to:
                return
            doc = {"version": _CACHE_VERSION, "chain_id": self.chain_id, "read_to": self._read_to,
                   "last_hash": self._last_hash, "signer_from": self._signer_from,
                   "latest": [[self._at[tp], signed] for tp, signed in self.latest.items()]}
            try:
                write_atomic(self._cache, orjson.dumps(doc), mode=0o600)
            except OSError as exc:
                logger.warning("could not write the tree heads cache %s: %s", self._cache, exc)
            self._saved = (self._read_to, time.monotonic())

    def _within_tree(self, topic: str, partition: int, size: int) -> None:
        """ProofError for a head larger than this log's tree of its partition."""
        trees = self.log.trees
        if trees is not None and (topic, partition) in trees.states():
            have = trees.state(topic, partition).size
            if size > have:
                raise ProofError(f"a head of {topic}[{partition}] at tree size {size}, beyond the log's {have} leaves")

    def _no_retired_key(self, pubkey: str, offset: int, mine: str | None) -> None:
        """ProofError for a head that a key other than ``mine`` (the current log key) signed
        after ``mine`` signed its first; else note that first head."""
        if mine is None:
            return
        if pubkey == mine:
            if self._signer_from is None or self._signer_from[0] != mine:
                self._signer_from = (mine, offset)
        elif self._signer_from is not None and self._signer_from[0] == mine and offset > self._signer_from[1]:
            raise ProofError("signed by a retired log key after the current key's first head")

    def due(self) -> list[tuple[str, int, TreeState]]:
        """Partitions whose tree is larger than their newest head."""
        trees = self.log.trees
        if trees is None:
            return []
        out = []
        for (topic, p), st in sorted(trees.states().items()):
            have = self.latest.get((topic, p))
            if has_tree(topic) and st.size > (have["head"]["tree_size"] if have else 0):
                out.append((topic, p, st))
        return out

    def publish(self, now: Callable[[], float] = time.time) -> int:
        """Sign and append the heads that are due (one append); returns how many."""
        if self.signer is None:
            raise ProofError("tree heads are published by the chain's writer, which holds the log key")
        with self._lock:
            self.log.catch_up_trees()
            due = self.due()
            if not due:
                return 0
            ts = int(now() * 1000)
            signer = self.signer
            signed = [sign_head(signer, make_head(self.chain_id, t, p, st, ts)) for t, p, st in due]
            records = [Record(CHECKPOINTS, head_key(t, p), self.codec.encode(CHECKPOINTS, s), ts, 0)
                       for (t, p, _), s in zip(due, signed)]
            placed = self.log.append(records)
            offsets = [off for _, off in placed]
            for (t, p, _), s, off in zip(due, signed, offsets):
                self.latest[(t, p)], self._at[(t, p)] = s, off
            if offsets and offsets[0] == self._read_to and offsets == list(range(offsets[0], offsets[-1] + 1)):
                # nothing else came between: our own heads need no second reading
                self._no_retired_key(signer.pubkey, offsets[0], signer.pubkey)
                self._read_to, self._last_hash = offsets[-1] + 1, _hash(records[-1].value)
            self.published += len(signed)
            self.save()
            return len(signed)


def _hash(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()
