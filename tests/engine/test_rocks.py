"""engine/rocks.py: a store opened again (read-write, read-only, secondary) runs on ledgerlog's
options, not rocksdict's defaults. rocksdict applies the options it is given only to column
families it creates, so without naming "default" every reopened store lost its Bloom filter,
its 16 MiB memtables and the block cache shared by the process."""
from __future__ import annotations

import glob
import os

import pytest

from ledgerlog.engine.rocks import BLOCK_CACHE_BYTES, open_store

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
        assert db.property_int_value("rocksdb.block-cache-capacity") == BLOCK_CACHE_BYTES
    finally:
        db.close()
    if how == "read-write":  # a read-write open writes the options in force
        text = _latest_options_file(path)
        assert "filter_policy=bloomfilter" in text
        assert "write_buffer_size=16777216" in text
        assert "cache_index_and_filter_blocks=true" in text and "partition_filters=true" in text
