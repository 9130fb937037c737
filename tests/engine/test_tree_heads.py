"""The heads a node takes as the newest of each partition (engine/treehead.py HeadPublisher):
only this chain's, under the partition's key, signed by one of its log keys. A forged head on
``_checkpoints`` (any writer of the topic can append one on a Kafka cluster) is neither served
nor allowed to stop the node from publishing."""
from __future__ import annotations

import time

from conftest import admit_ok

from ledgerlog.engine import topics as T
from ledgerlog.engine.log.base import Record
from ledgerlog.engine.signing import Signer
from ledgerlog.engine.treehead import check_head_signature, head_key, sign_head


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
