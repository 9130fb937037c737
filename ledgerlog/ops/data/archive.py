"""Archives of pruned records: what `ledgerlog prune` writes before it deletes anything.

One archive per prune, ``<parent>/h<H>/`` (default parent ``<data_dir>/archive``)::

    manifest.json                  format, chain id, genesis hash, prune height, and per file its
                                   topic, partition, offset range [first, end), record count, bytes
                                   and sha256; ``manifest_sha256`` over the rest
    <topic>-<partition>.avro       Avro OCF (deflate) of ledgerlog.archive.Record: topic, partition,
                                   offset, timestamp, key and value exactly as stored (the value in
                                   the Confluent wire format), and the event's height

The stored bytes are what ``ledgerlog audit --archive`` hashes into the Merkle leaves, so the
archive can be checked against the signed tree heads without ledgerlog (fastavro, hashlib). It is
written in ``<parent>/.tmp-h<H>-*``, every file and directory fsynced, then renamed into place:
a killed prune leaves either no archive or a whole one."""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from fastavro import reader as avro_reader
from fastavro import writer as avro_writer

from ledgerlog.engine.codec import Codec
from ledgerlog.engine.errors import CorruptStoreError, UsageError
from ledgerlog.engine.files import atomic_dir
from ledgerlog.engine.log.base import Log, LogRecord, TopicPartition
from ledgerlog.engine.movements import event_height
from ledgerlog.streams.feed import HEIGHT_FIELDS, EventDecoder

__all__ = ["FORMAT", "MANIFEST", "RECORD_SCHEMA", "archive_dirs", "archive_records", "read_archive", "verify_archive", "write_archive"]

FORMAT = "ledgerlog-archive/1"
MANIFEST = "manifest.json"
_CHUNK = 1 << 20
RECORD_SCHEMA: dict[str, Any] = {
    "type": "record", "name": "Record", "namespace": "ledgerlog.archive",
    "doc": "A pruned record of a ledgerlog topic partition, its bytes exactly as the log stored them.",
    "fields": [
        {"name": "topic", "type": "string"},
        {"name": "partition", "type": "int"},
        {"name": "offset", "type": "long"},
        {"name": "timestamp", "type": "long", "doc": "Record timestamp, ms since the Unix epoch."},
        {"name": "key", "type": "bytes"},
        {"name": "value", "type": "bytes", "doc": "Confluent wire format: magic 0, schema id, Avro."},
        {"name": "height", "type": "long", "doc": "The height the event takes effect at."}]}


def _file_name(topic: str, partition: int) -> str:
    return f"{topic}-{partition}.avro"


def _sha256(path: str) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def write_archive(log: Log, codec: Codec, dest: str, ranges: Mapping[TopicPartition, tuple[int, int]], *,
                  height: int, chain_id: str, genesis_hash: str,
                  progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write the records of ``ranges`` ((topic, partition) -> [first, end) offsets) to the new
    archive ``dest``; its manifest. An archive already at ``dest`` for the same height and ranges
    (a prune run again after a kill) is verified and kept; anything else there is refused."""
    if os.path.exists(dest):
        manifest = verify_archive(dest)
        same = {(f["topic"], f["partition"]): (f["first_offset"], f["end_offset"]) for f in manifest["files"].values()}
        if (manifest["prune_height"] == height and same == {tp: r for tp, r in ranges.items() if r[1] > r[0]}
                and (manifest.get("chain_id"), manifest.get("genesis_hash")) == (chain_id, genesis_hash)):
            return manifest  # this chain's, whole: not another chain's of the same heights and ranges
        raise UsageError(f"{dest} already holds another archive (chain {manifest.get('chain_id')}, prune height "
                         f"{manifest['prune_height']}); move it away or archive elsewhere")
    decoder = EventDecoder(codec)  # decodes only the fields a height is read from
    with atomic_dir(dest, f".tmp-{os.path.basename(dest)}-", clean_stale=True) as tmp:
        files: dict[str, Any] = {}
        for (topic, p), (lo, hi) in sorted(ranges.items()):
            if hi <= lo:
                continue
            name = _file_name(topic, p)
            count = [0]
            decode = decoder.for_topic(topic, HEIGHT_FIELDS.get(topic, {"stamp_height": None}))

            def rows(topic: str = topic, p: int = p, lo: int = lo, hi: int = hi, count: list[int] = count,
                     decode: Callable[[bytes, int], dict[str, Any]] = decode) -> Iterator[dict[str, Any]]:
                for rec in log.scan(topic, p, lo, hi):
                    count[0] += 1
                    if progress is not None and count[0] % 1000 == 0:
                        progress(1000)
                    yield {"topic": topic, "partition": p, "offset": rec.offset, "timestamp": rec.timestamp,
                           "key": rec.key, "value": rec.value,
                           "height": event_height(topic, decode(rec.value, 0))}
            with open(os.path.join(tmp, name), "wb") as f:
                avro_writer(f, RECORD_SCHEMA, rows(), codec="deflate",
                            metadata={"ledgerlog.chain_id": chain_id, "ledgerlog.topic": topic,
                                      "ledgerlog.partition": str(p), "ledgerlog.prune_height": str(height)})
            if progress is not None:
                progress(count[0] % 1000)
            size, digest = _sha256(os.path.join(tmp, name))
            files[name] = {"topic": topic, "partition": p, "first_offset": lo, "end_offset": hi,
                           "records": count[0], "bytes": size, "sha256": digest}
        body = {"format": FORMAT, "chain_id": chain_id, "genesis_hash": genesis_hash, "prune_height": height,
                "created_ms": int(time.time() * 1000), "files": files}
        manifest = {**body, "manifest_sha256": hashlib.sha256(_canonical(body)).hexdigest()}
        with open(os.path.join(tmp, MANIFEST), "wb") as mf:
            mf.write(json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def read_manifest(path: str) -> dict[str, Any]:
    """An archive's manifest, its own checksum checked (CorruptStoreError otherwise)."""
    where = os.path.join(path, MANIFEST)
    try:
        with open(where, encoding="utf-8") as f:
            doc = json.load(f)
        body = {k: v for k, v in doc.items() if k != "manifest_sha256"}
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r} is not {FORMAT}")
        ok = hashlib.sha256(_canonical(body)).hexdigest() == doc.get("manifest_sha256")
    except FileNotFoundError:
        raise UsageError(f"no archive at {path} (no {MANIFEST})") from None
    except (OSError, ValueError, AttributeError) as exc:
        raise CorruptStoreError(f"{where}: not an archive manifest ({exc})") from exc
    if not ok:
        raise CorruptStoreError(f"{where}: its manifest_sha256 does not match its content (edited or damaged)")
    return doc


def verify_archive(path: str, *, deep: bool = False) -> dict[str, Any]:
    """Check an archive: the manifest's own checksum, exactly the listed files, each one's size and
    sha256; with ``deep`` also read every record (count, offsets in range and rising). The
    manifest; CorruptStoreError naming the first bad file."""
    manifest = read_manifest(path)
    present = sorted(n for n in os.listdir(path) if n != MANIFEST)
    listed = sorted(manifest["files"])
    if present != listed:
        raise CorruptStoreError(f"{path}: holds {present}, its manifest lists {listed}")
    for name, meta in sorted(manifest["files"].items()):
        size, digest = _sha256(os.path.join(path, name))
        if (size, digest) != (meta["bytes"], meta["sha256"]):
            raise CorruptStoreError(f"{os.path.join(path, name)}: sha256 or size differs from the manifest's")
        if deep:
            n, last = 0, -1
            for rec in archive_records(os.path.join(path, name)):
                if not meta["first_offset"] <= rec.offset < meta["end_offset"] or rec.offset <= last:
                    raise CorruptStoreError(f"{os.path.join(path, name)}: offset {rec.offset} is out of order or range")
                last, n = rec.offset, n + 1
            if n != meta["records"]:
                raise CorruptStoreError(f"{os.path.join(path, name)}: {n} records, the manifest says {meta['records']}")
    return manifest


def archive_records(path: str) -> Iterator[LogRecord]:
    """The records of one archive file, in its order."""
    with open(path, "rb") as f:
        for row in avro_reader(f):
            assert isinstance(row, dict)
            yield LogRecord(row["topic"], row["partition"], row["offset"], row["key"], row["value"], row["timestamp"])


def archive_dirs(path: str) -> list[str]:
    """``path`` if it is an archive, else the archives directly under it, by prune height."""
    if os.path.exists(os.path.join(path, MANIFEST)):
        return [path]
    if not os.path.isdir(path):
        raise UsageError(f"no archive at {path}")
    found = [os.path.join(path, d) for d in os.listdir(path) if os.path.exists(os.path.join(path, d, MANIFEST))]
    if not found:
        raise UsageError(f"no archive at {path} (neither a {MANIFEST} nor archives under it)")
    return sorted(found, key=lambda d: read_manifest(d)["prune_height"])


def read_archive(path: str) -> Iterator[tuple[TopicPartition, Iterator[LogRecord]]]:
    """Per archived partition, its records in offset order, streamed (one archive; its checksums
    are checked first)."""
    manifest = verify_archive(path)
    for name, meta in sorted(manifest["files"].items(), key=lambda kv: (kv[1]["topic"], kv[1]["partition"])):
        yield (meta["topic"], meta["partition"]), archive_records(os.path.join(path, name))
