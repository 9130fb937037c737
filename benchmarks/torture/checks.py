"""The invariants a torture trial is judged by, on the data dir it left:

- lost: an acknowledged line whose id is not in the log (0);
- duplicated: an id the log holds twice (0);
- phantom: a line the server refused whose id is in the log anyway (0);
- digests: every projection's stored digest equals the digest recomputed from its state and the
  digest of a clean replay of the same log into a scratch dir, with nothing left to fold;
- wrong answers: sampled query answers served (HTTP or CLI) that differ from the clean replay's,
  or any 5xx other than a 503 while the disk refuses writes (0)."""
from __future__ import annotations

import json
import random
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from ledgerlog.engine import topics as T
from ledgerlog.engine.chain import open_chain
from ledgerlog.ops.api.fast import dumps as http_dumps
from ledgerlog.ops.query.queries import Queries
from ledgerlog.projections import energy
from ledgerlog.streams.runner import Runner

from .inputs import LineId, Workload
from .kit import cli, config, projection_dump

__all__ = ["Query", "Replay", "Verdict", "judge", "log_ids", "replay", "sample_queries", "served_cli", "served_http"]

#: event topic -> (line kind, how to read the id from its event)
_ID_OF: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    T.BLOCKS: ("block", lambda e: e["hash"]),
    T.MEMPOOL: ("transaction", lambda e: e["txid"]),
    T.TRANSACTIONS: ("confirmed", lambda e: e["txid"]),
    T.SHARES: ("share", lambda e: e["share_id"]),
    T.READINGS: ("reading", lambda e: e["reading_id"]),
    T.PROVIDERS: ("provider", lambda e: e["body"]["provider_id"]),
    T.SETTLEMENTS: ("settlement", lambda e: e["body"]["settlement_id"]),
    T.PAYOUTS: ("payout", lambda e: e["body"]["payout_id"]),
}


@dataclass
class Query:
    """One sampled question: its HTTP path and CLI arguments, and how the replay answers it."""

    name: str
    path: str
    args: tuple[str, ...]
    ask: Callable[[Queries], Any]


@dataclass
class Replay:
    """A clean fold of a data dir's log: projection digests and the sampled answers."""

    digests: dict[str, str]
    answers: dict[str, Any]
    queries: list[Query]


@dataclass
class Verdict:
    acknowledged: int = 0
    lost: int = 0
    duplicated: int = 0
    phantom: int = 0
    digests_equal: bool = False
    answers: int = 0
    wrong_answers: int = 0
    server_errors: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (not (self.lost or self.duplicated or self.phantom or self.wrong_answers or self.server_errors)
                and self.digests_equal)


def log_ids(data: Path) -> Counter[LineId]:
    """How many times the log holds each line id (a confirmed transaction counts as "confirmed")."""
    ids: Counter[LineId] = Counter()
    with open_chain(config(data), read_only=True) as chain:
        log = chain.log
        for topic, (kind, read) in _ID_OF.items():
            for p in range(len(log.end_offsets(topic))):
                for rec in log.scan(topic, p):
                    ids[(kind, read(chain.codec.decode(topic, rec.value)))] += 1
    return ids


def normal(answer: Any) -> Any:
    """An answer as JSON values, without what differs by who serves it (provenance, instance, and
    the log key: a replay into another data dir signs its tree heads with its own)."""
    doc = json.loads(http_dumps(answer)) if not isinstance(answer, (bytes, str)) else json.loads(answer)
    if isinstance(doc, dict):
        for field in ("provenance", "instance", "log_pubkey"):
            doc.pop(field, None)
    return doc


def sample_queries(w: Workload, q: Queries, rng: random.Random, small: bool = False) -> list[Query]:
    """Status, several accounts (one at a past height), workers, providers and a block; with
    ``small`` (answers through the CLI, a process each) status, one account at a past height and
    the poison worker and provider."""
    height = q.status()["height"]
    wallets = [k.address for k in w.keys.wallets]
    addrs = [w.poison_wallet, w.genesis["energy"]["treasury"], w.genesis["pool"]["address"], *rng.sample(wallets, 3)]
    past = rng.randint(0, max(0, height))
    provs = [w.poison_provider, *(p["provider_id"] for p in energy.providers(q.runner.handles["energy"].store.view(), 3))]
    out = [Query("status", "/v1/status", ("status",), lambda q: q.status())]
    out += [Query(f"account {a[:8]}", f"/v1/accounts/{a}", ("account", a), partial(Queries.account, address=a)) for a in addrs]
    out.append(Query(f"account {addrs[3][:8]}@{past}", f"/v1/accounts/{addrs[3]}?height={past}",
                     ("account", addrs[3], "--height", str(past)), lambda q: q.account(addrs[3], past)))
    out += [Query(f"worker {a[:8]}", f"/v1/pool/workers/{a}", ("worker", a), partial(Queries.worker, address=a))
            for a in (w.poison_wallet, wallets[0])]
    out += [Query(f"provider {p}", f"/v1/energy/providers/{p}", ("provider", p), partial(Queries.provider, provider_id=p))
            for p in provs[:3]]
    if height:
        h = str(rng.randint(1, height))
        out.append(Query(f"block {h}", f"/v1/blocks/{h}", ("block", h), lambda q: q.block(h)))
    if small:
        keep = {"status", f"account {addrs[3][:8]}@{past}", f"worker {w.poison_wallet[:8]}", f"provider {w.poison_provider}"}
        out = [x for x in out if x.name in keep]
    return out


def _ask(q: Queries, query: Query) -> Any:
    try:
        return normal(query.ask(q))
    except Exception as exc:  # noqa: BLE001  # a typed refusal (NOT_FOUND, ...) is an answer too
        return {"error": getattr(exc, "code", type(exc).__name__)}


def replay(data: Path, w: Workload, rng: random.Random, small: bool = False) -> Replay:
    """Fold ``data``'s log from scratch into a temp dir; its digests and sampled answers."""
    with tempfile.TemporaryDirectory(prefix="ll-replay-") as scratch, \
            open_chain(config(data), read_only=True) as chain:
        runner = Runner(chain.log, chain.codec, chain.genesis, scratch)
        try:
            runner.catch_up()
            q = Queries(runner, chain.genesis.chain_id)
            queries = sample_queries(w, q, rng, small)
            return Replay(runner.digests(), {x.name: _ask(q, x) for x in queries}, queries)
        finally:
            runner.close()


def served_http(url: str, queries: list[Query]) -> tuple[dict[str, Any], int]:
    """What a node answers each query, and how many answers were a 5xx."""
    out, errors = {}, 0
    with httpx.Client(base_url=url, timeout=30) as client:
        for x in queries:
            try:
                r = client.get(x.path)
            except httpx.HTTPError as exc:
                out[x.name] = {"error": type(exc).__name__}
                continue
            errors += r.status_code >= 500
            out[x.name] = normal(r.content) if r.status_code == 200 else {"error": _code(r.content)}
    return out, errors


def served_cli(data: Path, queries: list[Query]) -> dict[str, Any]:
    """What the `ledgerlog` query commands print for each query."""
    out = {}
    for x in queries:
        proc = cli(data, *x.args)
        out[x.name] = normal(proc.stdout) if proc.returncode == 0 else {"error": _code(proc.stderr)}
    return out


def _code(body: bytes) -> str:
    try:
        return str(json.loads(body.splitlines()[-1] if body.strip() else b"{}").get("code"))
    except (ValueError, AttributeError, IndexError):
        return f"unreadable: {body[:100]!r}"


def judge(data: Path, acked: Iterable[LineId], refused: Iterable[LineId], ref: Replay,
          served: dict[str, Any], server_errors: int = 0, plant_loss: bool = False) -> Verdict:
    """Hold ``data`` (no process writing it now) to the invariants. ``served`` maps each of
    ``ref``'s query names to what the node or CLI answered. ``plant_loss`` pretends one
    acknowledged line is missing from the log (to show the checker fails)."""
    v = Verdict(server_errors=server_errors)
    ids = log_ids(data)
    acked = set(acked)
    v.acknowledged = len(acked)
    if plant_loss and acked:
        ids.pop(min(acked), None)
        if min(acked)[0] == "transaction":
            ids.pop(("confirmed", min(acked)[1]), None)

    def present(i: LineId) -> bool:
        return ids[i] > 0 or (i[0] == "transaction" and ids[("confirmed", i[1])] > 0)

    lost = sorted(i for i in acked if not present(i))
    v.lost = len(lost)
    v.duplicated = sum(1 for n in ids.values() if n > 1)
    phantom = [i for i in set(refused) - acked if present(i)]
    v.phantom = len(phantom)
    if lost:
        v.notes.append(f"lost e.g. {lost[0]}")
    dump = projection_dump(data)
    bad = [n for n, d in dump.items() if not (d["digest"] == d["recomputed"] == ref.digests.get(n)) or d["lag"]]
    v.digests_equal = bool(dump) and set(dump) == set(ref.digests) and not bad
    if bad:
        v.notes.append(f"digests differ from a clean replay: {bad}")
    for name, want in ref.answers.items():
        v.answers += 1
        if served.get(name) != want:
            v.wrong_answers += 1
            v.notes.append(f"{name}: served {str(served.get(name))[:300]} != replay {str(want)[:300]}")
    return v
