"""`verify` replays governance changes (docs/PROTOCOL.md §8.5): it agrees with admission on a log
admission wrote (a registration stamped at a change's height may follow either value), and names
records a faulty writer put around admission."""
from __future__ import annotations

from typing import Any

from conftest import admit, admit_ok, signer_from_byte

from ledgerlog.engine import topics as T
from ledgerlog.engine.avro import encode as avro_encode
from ledgerlog.engine.crypto import H
from ledgerlog.engine.log.base import Record
from ledgerlog.ops.verify.checks import verify

OWNER = signer_from_byte(0x71)


def _write(chain, topic: str, key: str, event: dict[str, Any], ts: int) -> None:
    """Straight to the log, past admission, as a faulty writer could."""
    chain.log.append([Record(topic, key.encode(), chain.codec.encode(topic, event), ts)], {})


def _problems(chain) -> list[dict[str, Any]]:
    chain.close()  # verify opens the chain itself
    return verify(chain.config, signatures=True)["log"]["problems"]


def test_verify_agrees_with_admission(chain, keys, lines):
    lines.fund(OWNER)
    low = chain.genesis.energy.min_stake
    admit_ok(chain, lines.provider(OWNER, "before", stake=low), lines.governance("min_stake", 5 * low))
    assert [r["code"] for r in admit(chain, lines.provider(OWNER, "under", stake=low)).rejections] == ["STAKE_TOO_LOW"]
    admit_ok(chain, lines.provider(OWNER, "after", stake=5 * low), lines.block())
    admit_ok(chain, lines.governance("max_price_per_kwh", 400), lines.provider(OWNER, "cheap", stake=5 * low,
                                                                               price_per_kwh=400))
    assert _problems(chain) == []


def test_verify_names_registrations_and_changes_admission_would_refuse(chain, keys, lines):
    lines.fund(OWNER)
    admit_ok(chain, lines.governance("min_stake", 5_000_000), lines.block())  # stamped 1; tip 2 now
    line = lines.provider(OWNER, "forged", stake=1_000_000)
    assert [r["code"] for r in admit(chain, line).rejections] == ["STAKE_TOO_LOW"]
    _write(chain, T.PROVIDERS, "forged", {**{k: line[k] for k in ("body", "pubkey", "signature")},
                                          "stamp_height": 2}, line["body"]["timestamp"])
    bogus = lines.governance("fee", 5)
    cid = H(avro_encode("GovernanceBody", bogus["body"]))
    _write(chain, T.GOVERNANCE, "fee", {**{k: bogus[k] for k in ("body", "pubkey", "signature")},
                                        "change_id": cid, "previous": 0, "seq": 2, "stamp_height": 2},
           bogus["body"]["timestamp"])
    by_oracle = lines.governance("min_stake", 9_000_000, signer=keys.oracle)
    cid = H(avro_encode("GovernanceBody", by_oracle["body"]))
    _write(chain, T.GOVERNANCE, "min_stake", {**{k: by_oracle[k] for k in ("body", "pubkey", "signature")},
                                              "change_id": cid, "previous": 5_000_000, "seq": 9, "stamp_height": 2},
           by_oracle["body"]["timestamp"])
    found = {(p["code"], p["where"].split("@")[0]) for p in _problems(chain)}
    assert found == {("STAKE_TOO_LOW", f"{T.PROVIDERS}[{_partition(chain, T.PROVIDERS, 'forged')}]"),
                     ("UNKNOWN_PARAMETER", f"{T.GOVERNANCE}[0]"),
                     ("BAD_SIGNATURE", f"{T.GOVERNANCE}[0]"),
                     ("BAD_EVENT", f"{T.GOVERNANCE}[0]")}, found


def _partition(chain, topic: str, key: str) -> int:
    from ledgerlog.engine.partitioner import partition_for
    return partition_for(key.encode(), chain.log.topics()[topic])
