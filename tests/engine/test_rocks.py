"""engine/rocks.py: a store opened again (read-write, read-only, secondary) runs on ledgerlog's
options, not rocksdict's defaults. rocksdict applies the options it is given only to column
families it creates, so without naming "default" every reopened store lost its Bloom filter,
its 16 MiB memtables and the block cache shared by the process."""
from __future__ import annotations

import glob
import os

import pytest

from ledgerlog.engine.rocks import open_store, tuning

FMT = b"test/1"


def _latest_options_file(path: str) -> str:
    files = sorted(glob.glob(os.path.join(path, "OPTIONS-*")), key=lambda f: int(f.rsplit("-", 1)[1]))
    with open(files[-1]) as f:
        return f.read()


@pytest.mark.parametrize("how", ["read-write", "read-only", "secondary"])
def test_reopened_store_keeps_its_options(tmp_path, how: str) -> None:
    path = str(tmp_path / "store")
    db = open_store(path, FMT)
    db.put(b"k", b"v")
    db.close()
    kwargs = {"read-write": {}, "read-only": {"read_only": True},
              "secondary": {"secondary_dir": str(tmp_path / "scratch")}}[how]
    db = open_store(path, FMT, **kwargs)
    try:
        assert db.get(b"k") == b"v"
        assert db.property_int_value("rocksdb.block-cache-capacity") == tuning().block_cache_mb * 1024 * 1024
    finally:
        db.close()
    if how == "read-write":  # a read-write open writes the options in force
        text = _latest_options_file(path)
        assert "filter_policy=bloomfilter" in text
        assert "write_buffer_size=16777216" in text
        assert "cache_index_and_filter_blocks=true" in text and "partition_filters=true" in text


def test_the_config_tunes_every_store(tmp_path) -> None:
    """[rocksdb] in config.toml: block cache, memtable size, open files and compression per level."""
    from ledgerlog.engine import rocks
    from ledgerlog.engine.chain import init_chain, open_chain
    from ledgerlog.engine.config import load_config
    from ledgerlog.engine.errors import ConfigError

    data = tmp_path / "data"
    data.mkdir()
    (data / "config.toml").write_text('[rocksdb]\nblock_cache_mb = 8\nwrite_buffer_mb = 4\nmax_open_files = 300\n'
                                      'compression = "none,none,lz4,lz4,zstd,zstd,zstd"\n')
    before = rocks.tuning()
    try:
        cfg = load_config(str(data), {})
        init_chain(cfg)
        with open_chain(cfg) as chain:
            db = chain.log.raw()
            assert db.property_int_value("rocksdb.block-cache-capacity") == 8 << 20
        text = _latest_options_file(cfg.log_path)
        assert "write_buffer_size=4194304" in text and "max_open_files=300" in text
        assert "compression_per_level=kNoCompression:kNoCompression:kLZ4Compression:kLZ4Compression:kZSTD" in text
        env = load_config(str(data), {"LEDGERLOG_ROCKSDB_COMPRESSION": "zstd"})
        assert env.rocks_tuning().levels() == ["zstd"]
        for bad in ({"LEDGERLOG_ROCKSDB_COMPRESSION": "brotli"}, {"LEDGERLOG_ROCKSDB_BLOCK_CACHE_MB": "0"},
                    {"LEDGERLOG_ROCKSDB_MAX_OPEN_FILES": "0"}):
            with pytest.raises(ConfigError, match="rocksdb"):
                load_config(str(data), bad)
    finally:
        rocks.configure(before)


@pytest.mark.parametrize("start", [None, b"a", b"h/", b"h/b", b"h/zz", b"i"])
def test_a_prefix_walk_from_any_start_equals_the_in_memory_store_s(tmp_path, start) -> None:
    """A start that sorts before the prefix starts at the prefix (it ended the walk at once: an
    empty page for ?prefix=h/&start=a), one after it gives nothing; the in-memory store agrees."""
    from ledgerlog.engine.rocks import iter_prefix
    from ledgerlog.projections.memory import MemoryTxn

    keys = [b"a/1", b"h/a", b"h/b", b"h/c", b"z"]
    db = open_store(str(tmp_path / "s"), FMT)
    mem = MemoryTxn()
    try:
        for k in keys:
            db[k] = b"v"
            mem.put(k, b"v")
        got = [k for k, _ in iter_prefix(db, b"h/", start)]
        assert got == [k for k, _ in mem.items(b"h/", start)]
        assert got == [k for k in keys if k.startswith(b"h/") and (start is None or k >= start)]
    finally:
        db.close()


def test_a_corrupt_log_is_not_sent_to_reproject_and_a_corrupt_projection_is():
    """The log's CORRUPT message told operators to rebuild it with `ledgerlog reproject`, which
    rebuilds projections from the log, never the log."""
    from ledgerlog.engine.errors import CorruptStoreError
    from ledgerlog.engine.rocks import map_error
    boom = Exception("Corruption: block checksum mismatch in 000012.sst")
    log_err = map_error(boom, "/srv/data/log")
    assert isinstance(log_err, CorruptStoreError) and "reproject" not in str(log_err)
    assert "snapshot restore" in str(log_err)
    proj = map_error(boom, "/srv/data/projections/balances/v2-3")
    assert isinstance(proj, CorruptStoreError) and "ledgerlog reproject" in str(proj)


def test_stores_in_use_sees_this_process_and_others_and_drops_no_lock(tmp_path):
    """The probe opened and closed each LOCK file, and closing it dropped this process's own
    RocksDB lock on it: another process could then open the same store."""
    import subprocess
    import sys

    from ledgerlog.engine.rocks import stores_in_use
    path = str(tmp_path / "s")
    open_store(path, b"test-format").close()
    assert stores_in_use(str(tmp_path)) == []
    db = open_store(path, b"test-format")
    try:
        assert stores_in_use(str(tmp_path)) == [path]
        other = subprocess.run([sys.executable, "-c", "import sys\nfrom ledgerlog.engine.rocks import open_store\n"
                                "from ledgerlog.engine.errors import StoreLockedError\n"
                                "try:\n    open_store(sys.argv[1], b'test-format')\nexcept StoreLockedError:\n"
                                "    sys.exit(3)\n", path], capture_output=True, timeout=60)
        assert other.returncode == 3, other.stderr.decode()[-500:]
    finally:
        db.close()
    assert stores_in_use(str(tmp_path)) == []
