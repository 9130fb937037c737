"""The energy market over HTTP (docs/PROTOCOL.md §8.5): GET /v1/energy/providers (paginated),
/v1/energy/market, /v1/energy/providers/{id} and /v1/energy/governance, now and as of every
height, equal an independent replay of the log's events; every provider is listed exactly once
across pages; bad parameters answer 400, never 500."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from conftest import Lines, admit_ok, signer_from_byte
from fastapi.testclient import TestClient

from ledgerlog.engine import topics as T
from ledgerlog.engine.chain import Chain
from ledgerlog.engine.governance import PARAMETERS
from ledgerlog.ops.api.app import create_app
from ledgerlog.ops.node.lifecycle import Node
from ledgerlog.projections import energy

I64_MAX = (1 << 63) - 1
PIDS = [f"p-{i:02d}" for i in range(11)] + ["Zeta", "a/b", "é-unicode", "x" * 256]


def _market_history(chain: Chain, ln: Lines) -> None:
    """Providers registered over several heights around governance changes, readings and
    partial settlements (oldest first), so every height has a different market."""
    keys = ln.keys
    owners = [signer_from_byte(0x60 + i) for i in range(3)]
    ln.fund(*owners)                                                  # height 1
    price = {pid: 100 + 37 * i for i, pid in enumerate(PIDS)}
    first, rest = PIDS[:6], PIDS[6:]
    admit_ok(chain, *(ln.provider(owners[i % 3], pid, meter_id=f"m-{i}", price_per_kwh=price[pid])
                      for i, pid in enumerate(first)))
    admit_ok(chain, ln.governance("min_stake", 2_000_000), ln.block())  # in force from height 1 on
    for h in range(3):
        admit_ok(chain, *(ln.reading(pid, 1000 * (h + 1) + i, meter_id=f"m-{i}") for i, pid in enumerate(first)))
        admit_ok(chain, ln.block())                                   # heights 3, 4, 5
    admit_ok(chain, ln.governance("max_price_per_kwh", 900))
    admit_ok(chain, *(ln.provider(owners[i % 3], pid, meter_id=f"m-{i + 6}", stake=2_000_000,
                                  price_per_kwh=price[pid]) for i, pid in enumerate(rest)))
    admit_ok(chain, *(ln.reading(pid, 777 + i, meter_id=f"m-{i + 6}") for i, pid in enumerate(rest)))
    admit_ok(chain, ln.block())                                       # height 6
    for i, pid in enumerate(first[:4]):  # the first reading of each and part of the second
        mkwh = 1000 + i + 500
        admit_ok(chain, ln.settlement(f"s-{pid}", pid, mkwh, mkwh * price[pid] // 1000))
    admit_ok(chain, ln.block(), ln.reading(PIDS[0], 5, meter_id="m-0"))  # 7
    admit_ok(chain, ln.settlement("s-all", PIDS[6], 777, 777 * price[PIDS[6]] // 1000, signer=keys.treasury))


def _events(chain: Chain) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for t in (T.PROVIDERS, T.READINGS, T.SETTLEMENTS, T.GOVERNANCE):
        for p, end in enumerate(chain.log.end_offsets(t)):
            out += [(t, chain.codec.decode(t, r.value)) for r in chain.log.scan(t, p, 0, end)]
    return out


def replay(events: list[tuple[str, dict[str, Any]]], genesis: Any, height: int | None) -> dict[str, Any]:
    """PROTOCOL §6 and §8.5 from the events stamped ``height`` or lower, folded here."""
    seen = [(t, ev) for t, ev in events if height is None or ev["stamp_height"] <= height]
    provs: dict[str, dict[str, Any]] = {}
    credits: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for t, ev in sorted(seen, key=lambda te: (te[1]["stamp_height"], te[0] != T.PROVIDERS)):
        if t == T.GOVERNANCE:
            continue
        b = ev["body"]
        p = provs.setdefault(b["provider_id"], {
            "provider_id": b["provider_id"], "registered": False, "owner": None, "meter_id": None,
            "stake": None, "price_per_kwh": None, "registered_height": None, "credited_milli_kwh": 0,
            "settled_milli_kwh": 0, "settled_amount": 0, "readings": 0, "settlements": 0})
        if t == T.PROVIDERS:
            p.update(registered=True, owner=b["owner"], meter_id=b["meter_id"], stake=b["stake"],
                     price_per_kwh=b["price_per_kwh"], registered_height=ev["stamp_height"])
        elif t == T.READINGS:
            p["credited_milli_kwh"] += b["milli_kwh"]
            p["readings"] += 1
            credits[b["provider_id"]].append((ev["stamp_height"], b["milli_kwh"]))
        else:
            p["settled_milli_kwh"] += b["milli_kwh"]
            p["settled_amount"] += b["amount"]
            p["settlements"] += 1
    for pid, p in provs.items():
        p["unsettled_milli_kwh"] = p["credited_milli_kwh"] - p["settled_milli_kwh"]
        total, p["unsettled_since_height"] = 0, None
        for h, mkwh in credits[pid]:  # stamps rise along a partition: credit order
            total += mkwh
            if total > p["settled_milli_kwh"]:
                p["unsettled_since_height"] = h
                break
    reg = [p for p in provs.values() if p["registered"]]
    credited = sum(p["credited_milli_kwh"] for p in provs.values())
    settled = sum(p["settled_milli_kwh"] for p in provs.values())
    weight = sum(p["credited_milli_kwh"] for p in reg)
    mean = sum(p["price_per_kwh"] for p in reg) // len(reg) if reg else 0
    params = {n: p.initial(genesis) for n, p in PARAMETERS.items()}
    for _, ev in sorted(((ev["seq"], ev) for t, ev in seen if t == T.GOVERNANCE), key=lambda x: x[0]):
        params[ev["body"]["parameter"]] = ev["body"]["value"]
    return {"providers": provs, "parameters": params, "market": {
        "providers": len(reg), "credited_milli_kwh": credited, "traded_milli_kwh": settled,
        "settled_milli_kwh": settled, "unsettled_milli_kwh": credited - settled,
        "settled_amount": sum(p["settled_amount"] for p in provs.values()),
        "average_price_per_kwh": sum(p["price_per_kwh"] * p["credited_milli_kwh"] for p in reg) // weight
        if weight else mean,
        "mean_price_per_kwh": mean, "total_stake": sum(p["stake"] for p in reg),
        "readings": sum(p["readings"] for p in provs.values()),
        "settlements": sum(p["settlements"] for p in provs.values())}}


@pytest.fixture
def market_node(chain, keys, lines) -> Iterator[tuple[TestClient, list[tuple[str, dict[str, Any]]], Any, int]]:
    _market_history(chain, lines)
    events, genesis, tip = _events(chain), chain.genesis, chain.write_state().tip().height
    cfg = chain.config
    chain.close()
    node = Node(cfg)
    node.start()
    client = TestClient(create_app(node), raise_server_exceptions=False)
    try:
        yield client, events, genesis, tip
    finally:
        client.close()
        node.stop()


def _get(client: TestClient, path: str, **params: Any) -> dict[str, Any]:
    r = client.get(path, params={k: v for k, v in params.items() if v is not None})
    assert r.status_code == 200, (path, params, r.text)
    body = r.json()
    prov = body.pop("provenance")
    assert (prov["projection"], prov["version"], prov["lag"]) == ("energy", energy.VERSION, 0)
    assert set(prov["positions"]) == {T.PROVIDERS, T.READINGS, T.SETTLEMENTS, T.GOVERNANCE}
    return body


def _all_pages(client: TestClient, limit: int, height: int | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = None
    for _ in range(len(PIDS) + 2):
        page = _get(client, "/v1/energy/providers", limit=limit, after=after, height=height)
        assert page["count"] == len(page["providers"]) <= limit and page["limit"] == limit
        rows += page["providers"]
        after = page["next_after"]
        if after is None:
            return rows
        assert after == page["providers"][-1]["provider_id"]
    raise AssertionError("the cursor did not reach the end")


def test_energy_endpoints_equal_a_replay_now_and_at_every_height(market_node):
    client, events, genesis, tip = market_node
    assert {t for t, _ in events} == {T.PROVIDERS, T.READINGS, T.SETTLEMENTS, T.GOVERNANCE}
    for height in (None, *range(tip + 2)):
        want = replay(events, genesis, height)
        at = {} if height is None else {"height": height}
        assert _get(client, "/v1/energy/market", height=height) == {**want["market"], **at}, height
        gov = _get(client, "/v1/energy/governance", height=height)
        assert {n: v["value"] for n, v in gov["parameters"].items()} == want["parameters"], height
        listed = _all_pages(client, 4, height)
        ordered = sorted(want["providers"], key=lambda pid: pid.encode())
        assert listed == [want["providers"][pid] for pid in ordered], height
        for pid in ("p-00", "p-06", "Zeta", "é-unicode"):
            r = client.get(f"/v1/energy/providers/{quote(pid)}", params={} if height is None else {"height": height})
            if pid not in want["providers"]:
                assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
                continue
            body = r.json()
            body.pop("provenance")
            assert body == {**want["providers"][pid], **at}, (pid, height)
    now = replay(events, genesis, None)
    assert now["market"]["settlements"] == 5 and now["market"]["unsettled_milli_kwh"] > 0
    assert now["parameters"] == {"min_stake": 2_000_000, "max_price_per_kwh": 900}
    assert replay(events, genesis, 0)["parameters"]["min_stake"] == genesis.energy.min_stake


def test_every_provider_on_exactly_one_page(market_node):
    client, events, genesis, tip = market_node
    for height in (None, 1, tip):
        want = sorted(replay(events, genesis, height)["providers"], key=lambda pid: pid.encode())
        for limit in (1, 3, len(PIDS), 1000):
            got = [p["provider_id"] for p in _all_pages(client, limit, height)]
            assert got == want and len(set(got)) == len(got), (height, limit)
    first = _get(client, "/v1/energy/providers")
    assert first["limit"] == 100 and first["next_after"] is None and first["count"] == len(PIDS)
    after_last = _get(client, "/v1/energy/providers", after="\U0010ffff")
    assert after_last["providers"] == [] and after_last["next_after"] is None


@pytest.mark.parametrize("path, params", [
    ("/v1/energy/providers", {"limit": "0"}),
    ("/v1/energy/providers", {"limit": "1001"}),
    ("/v1/energy/providers", {"limit": "-1"}),
    ("/v1/energy/providers", {"limit": "ten"}),
    ("/v1/energy/providers", {"limit": str(1 << 64)}),
    ("/v1/energy/providers", {"after": ""}),
    ("/v1/energy/providers", {"after": "x" * 257}),
    ("/v1/energy/providers", {"height": "-1"}),
    ("/v1/energy/providers", {"height": str(I64_MAX + 1)}),
    ("/v1/energy/providers", {"height": "1.5"}),
    ("/v1/energy/market", {"height": "-1"}),
    ("/v1/energy/market", {"height": str(I64_MAX + 1)}),
    ("/v1/energy/market", {"height": "x"}),
    ("/v1/energy/governance", {"height": "-5"}),
    ("/v1/energy/governance", {"height": "9" * 40}),
    ("/v1/energy/providers/p-00", {"height": "-1"}),
])
def test_bad_parameters_answer_400(market_node, path, params):
    client, *_ = market_node
    r = client.get(path, params=params)
    assert r.status_code == 400, (path, params, r.status_code, r.text)
    assert r.json()["code"] == "BAD_REQUEST"


def test_heights_beyond_the_tip_answer_the_present(market_node):
    client, events, genesis, _ = market_node
    want = replay(events, genesis, None)
    assert _get(client, "/v1/energy/market", height=I64_MAX) == {**want["market"], "height": I64_MAX}
    assert {n: v["value"] for n, v in _get(client, "/v1/energy/governance", height=I64_MAX)["parameters"].items()} \
        == want["parameters"]
    assert len(_all_pages(client, 1000, I64_MAX)) == len(PIDS)


def test_openapi_lists_the_energy_routes(market_node):
    client, *_ = market_node
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/v1/energy/providers", "/v1/energy/market", "/v1/energy/governance"):
        assert "get" in paths[p], p
    names = {q["name"] for q in paths["/v1/energy/providers"]["get"]["parameters"]}
    assert names == {"limit", "after", "height"}

