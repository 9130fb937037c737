"""The heads a node takes as the newest of each partition (engine/treehead.py HeadPublisher):
only this chain's, under the partition's key, signed by one of its log keys. A forged head on
``_checkpoints`` (any writer of the topic can append one on a Kafka cluster) is neither served
nor allowed to stop the node from publishing."""
from __future__ import annotations

import json
import os
import time

import pytest
from conftest import admit_ok

from ledgerlog.engine import topics as T
from ledgerlog.engine.admission.state import WriteState
from ledgerlog.engine.chain import open_chain
from ledgerlog.engine.log.base import Record
from ledgerlog.engine.signing import Signer
from ledgerlog.engine.treehead import HeadPublisher, check_head_signature, head_key, sign_head


def _forge(chain, head: dict, signer: Signer, key: bytes | None = None) -> None:
    signed = sign_head(signer, head)
    chain.log.append([Record(T.CHECKPOINTS, key or head_key(head["topic"], head["partition"]),
                             chain.codec.encode(T.CHECKPOINTS, signed), int(time.time() * 1000), 0)])


def test_forged_heads_are_not_taken_and_publishing_goes_on(chain, lines):
    heads = chain.heads
    admit_ok(chain, lines.share())
    assert heads.publish() >= 1
    (tp,) = [tp for tp in heads.latest if tp[0] == T.SHARES]
    genuine = heads.latest[tp]
    huge = {**genuine["head"], "tree_size": 2**62, "timestamp": genuine["head"]["timestamp"] + 1}
    _forge(chain, huge, Signer.generate())  # another key
    _forge(chain, {**huge, "chain_id": "other"}, heads.signer)  # another chain's
    _forge(chain, huge, heads.signer, key=b"ledger.blocks/0")  # under another partition's key
    heads.refresh()
    assert heads.latest[tp] == genuine  # none of them is taken as the newest head
    admit_ok(chain, lines.share(job_id="j2"))
    assert heads.publish() >= 1  # the grown tree still gets its head
    newest = heads.latest[tp]
    assert newest["head"]["tree_size"] == genuine["head"]["tree_size"] + 1
    check_head_signature(newest, [heads.signer.pubkey])


# -- the heads cache: an open folds only the heads published since -------------------------------
def _publish_rounds(chain, lines, rounds: int, first: int = 0) -> None:
    for i in range(first, first + rounds):
        admit_ok(chain, lines.share(job_id=f"round-{i}"))
        assert chain.heads.publish() >= 1


def _full_fold(chain_or_log) -> dict:
    """The newest heads as a fold of _checkpoints from offset 0 (no cache) finds them."""
    ch = chain_or_log
    return HeadPublisher(ch.log, ch.codec, ch.genesis.chain_id, None, ch._log_keys,
                         lambda: WriteState(ch.log).log_key_now()).latest


def test_an_open_folds_only_the_heads_published_after_the_cache(config, chain, lines):
    """Every open (a node's start, most CLI commands) read and verified every head ever
    published: 3.4 s at 65k heads, growing by the day under load."""
    _publish_rounds(chain, lines, 30)
    end = chain.log.end_offsets(T.CHECKPOINTS)[0]
    want = _full_fold(chain)
    chain.close()
    assert os.stat(config.heads_cache_path).st_mode & 0o777 == 0o600
    for read_only in (True, False):
        with open_chain(config, read_only=read_only) as again:
            assert again.heads.read_from == end
            assert again.heads.latest == want
            assert _full_fold(again) == want


def test_a_cache_behind_the_log_is_resumed_from(config, chain, lines):
    """A writer killed after its last cache write: the next open folds the heads after it."""
    _publish_rounds(chain, lines, 5)
    behind = open(config.heads_cache_path, "rb").read()  # written at the first publish
    _publish_rounds(chain, lines, 10, first=5)
    want = _full_fold(chain)
    chain.close()
    with open(config.heads_cache_path, "wb") as f:
        f.write(behind)
    with open_chain(config, read_only=True) as again:
        assert 0 < again.heads.read_from < again.log.end_offsets(T.CHECKPOINTS)[0]
        assert again.heads.latest == want


@pytest.mark.parametrize("damage", ["garbage", "beyond_the_log", "other_record", "forged_head", "other_chain",
                                    "other_key", "signer_from_offset", "signer_from_short", "signer_from_beyond",
                                    "head_elsewhere", "head_offset_text"])
def test_a_cache_that_does_not_describe_the_log_is_not_used(config, chain, lines, damage):
    _publish_rounds(chain, lines, 8)
    want = _full_fold(chain)
    chain.close()
    doc = json.loads(open(config.heads_cache_path, "rb").read())
    if damage == "beyond_the_log":
        doc["read_to"] += 1
    elif damage == "other_record":
        doc["read_to"] -= 1  # the hash is of the record after
    elif damage == "forged_head":
        doc["latest"][0][1]["head"]["tree_size"] += 1  # its signature no longer verifies
    elif damage == "signer_from_offset":
        doc["signer_from"][1] = None  # (was a TypeError: every open failed)
    elif damage == "signer_from_short":
        doc["signer_from"] = doc["signer_from"][:1]
    elif damage == "signer_from_beyond":
        doc["signer_from"][1] = 10**15  # would switch the retired-key rule off for what follows
    elif damage == "head_elsewhere":
        doc["latest"][0][0] = doc["latest"][1][0]  # the record there is another head
    elif damage == "head_offset_text":
        doc["latest"][0][0] = "0"
    elif damage == "other_chain":
        doc["chain_id"] = "another"
    elif damage == "other_key":
        doc["signer_from"] = [Signer.generate().pubkey, 0]
    with open(config.heads_cache_path, "wb") as f:
        f.write(b"\x00{not json" if damage == "garbage" else json.dumps(doc).encode())
    with open_chain(config, read_only=True) as again:
        assert again.heads.read_from == 0
        assert again.heads.latest == want
