"""The report: ratios of ledgerlog's figures to the ceilings and to each peer, one aligned table
for the terminal, and results.json."""
from __future__ import annotations

import os
from typing import Any

import orjson

__all__ = ["goals", "ratios", "table", "write"]


def _per_s(d: Any, *path: str) -> float | None:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return float(d) if isinstance(d, (int, float)) and d > 0 else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def ratios(res: dict[str, Any]) -> dict[str, Any]:
    """ledgerlog / ceiling and ledgerlog / each peer (None where a figure is missing)."""
    signed = _per_s(res, "ingest", "signed", "events_per_s")
    signatures = _per_s(res, "ingest", "signed", "signed_events_per_s")
    unsigned = _per_s(res, "ingest", "unsigned", "events_per_s")
    rb_all = _per_s(res, "rebuild", "all", "events_per_s")
    rb_bal = _per_s(res, "rebuild", "balances", "events_per_s")
    verify = _per_s(res, "ceiling", "ed25519", "verify_per_s_one_core")
    cpus = res["machine"]["cpus"] or 1
    out: dict[str, Any] = {
        "rebuild_balances_vs_ceiling_fold": _ratio(rb_bal, _per_s(res, "ceiling", "fold", "events_per_s")),
        "rebuild_all_vs_ceiling_fold": _ratio(rb_all, _per_s(res, "ceiling", "fold", "events_per_s")),
        "ingest_unsigned_vs_ceiling_append": _ratio(unsigned, _per_s(res, "ceiling", "append", "events_per_s")),
        "ingest_signatures_vs_verify_all_cores": _ratio(signatures, verify * cpus if verify else None),
        "kafka_workers_2_vs_1": _ratio(_per_s(res, "kafka_workers", "two_workers", "events_per_s"),
                                       _per_s(res, "kafka_workers", "one_worker", "events_per_s")),
    }
    for name, peer in res.get("peers", {}).items():
        p_ingest = _per_s(peer, "ingest", "events_per_s")
        p_rebuild = _per_s(peer, "rebuild", "events_per_s")
        out[f"rebuild_balances_vs_{name}"] = _ratio(rb_bal, p_rebuild)
        out[f"rebuild_all_vs_{name}"] = _ratio(rb_all, p_rebuild)
        out[f"ingest_signed_vs_{name}"] = _ratio(signed, p_ingest)
        out[f"ingest_unsigned_vs_{name}"] = _ratio(unsigned, p_ingest)
    return out


def goals(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals against this run's figures: goal, target, measured, met (None: not
    measured in this run)."""
    r = res.get("ratios", {})
    q = res.get("query", {})
    rb_all = res.get("rebuild", {}).get("all", {})
    mem = rb_all.get("rss") or {}
    seconds_1m = 1_000_000 / rb_all["events_per_s"] if rb_all.get("events_per_s") else None
    # flatness needs a run long enough that process start-up is not a quarter of it (10 s of
    # samples); make bench-memory measures it over 10M events
    flat = (mem["last_quarter_mean_mib"] <= 1.15 * mem["first_quarter_mean_mib"]
            if mem and mem.get("samples", 0) >= 20 else None)
    rows = [
        ("rebuild all projections vs naive SQLite rebuild", ">= 1.0x", r.get("rebuild_all_vs_sqlite"), 1.0),
        ("rebuild balances vs naive SQLite rebuild", ">= 1.5x", r.get("rebuild_balances_vs_sqlite"), 1.5),
        ("rebuild all projections vs quixstreams", ">= 10x", r.get("rebuild_all_vs_quixstreams"), 10),
        ("rebuild all projections vs faust-streaming", ">= 10x", r.get("rebuild_all_vs_faust"), 10),
        ("rebuild all projections vs eventsourcing", ">= 50x", r.get("rebuild_all_vs_eventsourcing"), 50),
        ("balances rebuild vs the one-core ceiling", ">= 0.7", r.get("rebuild_balances_vs_ceiling_fold"), 0.7),
        ("signed ingest vs the all-core Ed25519 verify rate", ">= 0.8",
         r.get("ingest_signatures_vs_verify_all_cores"), 0.8),
        ("unsigned ingest, events/s (durable)", ">= 60,000",
         res.get("ingest", {}).get("unsigned", {}).get("events_per_s"), 60_000),
        ("account lookups/s, flat out", ">= 3,000", q.get("max", {}).get("rate"), 3_000),
        ("Kafka (Tansu): balances derived + folded by 2 worker processes vs 1", ">= 1.6x", r.get("kafka_workers_2_vs_1"), 1.6),
    ]
    out = [{"goal": g, "target": t, "measured": m, "met": None if m is None else m >= x} for g, t, m, x in rows]
    p99 = q.get("fixed", {}).get("p99_ms")
    cost = res.get("trees", {}).get("upkeep_share")
    out.append({"goal": "Merkle tree upkeep's share of unsigned ingest time (issue 15)", "target": "<= 0.10",
                "measured": cost, "met": None if cost is None else cost <= 0.10})
    out.append({"goal": "lookup p99 at 1,000/s offered, ms", "target": "<= 10", "measured": p99,
                "met": None if p99 is None else p99 <= 10})
    out.append({"goal": "reproject all of 1M events, s (from this run's rate)", "target": "<= 20",
                "measured": None if seconds_1m is None else round(seconds_1m, 1),
                "met": None if seconds_1m is None else seconds_1m <= 20})
    out.append({"goal": "reproject RSS peak, MiB (flat: last quarter within 15% of the first)", "target": "< 1024, flat",
                "measured": mem.get("peak_mib"),
                "met": None if flat is None else mem["peak_mib"] < 1024 and flat})
    return out


def _num(x: Any, digits: int = 0) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and digits:
        return f"{x:,.{digits}f}"
    return f"{round(x):,}" if isinstance(x, (int, float)) else str(x)


def _row(rows: list[tuple[str, ...]], what: str, fig: Any, ratio: float | None = None, note: str = "") -> None:
    if not isinstance(fig, dict) or "error" in fig:
        err = fig.get("error", "not run") if isinstance(fig, dict) else "not run"
        rows.append((what, "-", "-", "-", "-", f"error: {err}"[:90]))
        return
    rows.append((what, _num(fig.get("events")), _num(fig.get("seconds"), 2), _num(fig.get("events_per_s")),
                 "-" if ratio is None else f"{ratio:.2f}", note))


def _kafka_rows(rows: list[tuple[str, ...]], kw: dict[str, Any], ratio: float | None) -> None:
    """The sharded balances on Kafka: the deriver's pass; 1 and 2 worker processes end to end
    (derive + fold: the ratio), then folding an already derived topic."""
    if "error" in kw:
        _row(rows, "kafka: balances by 1 / 2 workers", kw)
        return
    _row(rows, "kafka: deriver alone (repartition by account)", kw.get("derive"), None,
         f"{_num(kw.get('derive', {}).get('records'))} records of rows to {kw.get('partitions')} partitions, 1 process")
    same = {True: "digests equal the embedded fold", False: "DIGEST MISMATCH", None: "digests equal across passes"}
    verdict = same[kw.get("digest_equals_embedded")] if kw.get("digests_equal") else "DIGESTS DIFFER BETWEEN PASSES"
    fold = kw.get("fold_only", {})
    for group, what, r in ((kw, "derive + fold", ratio), (fold, "fold only", fold.get("ratio_2_vs_1"))):
        for key, label in (("one_worker", "1 worker process"), ("two_workers", "2 worker processes")):
            fig = group.get(key, {})
            note = (f"cores busy {fig.get('cores_busy')} (+ broker {fig.get('broker_cores_busy')}), "
                    f"{fig.get('cpu_us_per_event')} us CPU/event, spread {fig.get('spread')}")
            if key == "two_workers":
                note += "; ratio: 2 workers / 1" + ("; " + verdict if group is kw else "")
            _row(rows, f"kafka: balances shards, {what}, {label}", fig, r if key == "two_workers" else None, note)


def table(res: dict[str, Any]) -> str:
    """One aligned table: what, events, seconds, events/s, ledgerlog / this, note."""
    r = res.get("ratios", {})
    rows: list[tuple[str, ...]] = []
    ing, rb, ce = res.get("ingest", {}), res.get("rebuild", {}), res.get("ceiling", {})
    _row(rows, "ledgerlog ingest, signed history", ing.get("signed"), None,
         f"{_num(ing.get('signed', {}).get('lines_per_s'))} lines/s, durable")
    _row(rows, "ledgerlog ingest, unsigned (shares)", ing.get("unsigned"), None, "durable")
    _row(rows, "ledgerlog first fold, all projections", rb.get("first_fold"))
    _row(rows, "ledgerlog reproject, all projections", rb.get("all"))
    _row(rows, "ledgerlog reproject, balances", rb.get("balances"))
    parts = (rb.get("balances") or {}).get("in_parts")
    if parts:
        whole = rb["balances"].get("events_per_s")
        _row(rows, f"ledgerlog reproject, balances in {parts.get('workers')} parts", parts,
             _ratio(parts.get("events_per_s"), whole), "split by log partition, merged; ratio: this / as planned")
    _row(rows, f"ceiling: simple fold loop, {ce.get('fold', {}).get('processes', 1)} process(es)", ce.get("fold"),
         r.get("rebuild_balances_vs_ceiling_fold"), "ratio: reproject balances / this (never above 1)")
    _row(rows, "ceiling: fastavro+rocksdict append", ce.get("append"), r.get("ingest_unsigned_vs_ceiling_append"),
         "ratio: unsigned ingest / this")
    kw = res.get("kafka_workers")
    if kw is not None:
        _kafka_rows(rows, kw, r.get("kafka_workers_2_vs_1"))
    for name, peer in res.get("peers", {}).items():
        cap = f", first {peer['capped_at']:,}" if isinstance(peer, dict) and peer.get("capped_at") else ""
        ok = "" if not isinstance(peer, dict) or peer.get("checksum_ok") is not False else ", CHECKSUM MISMATCH"
        _row(rows, f"{name} ingest", peer.get("ingest") if "error" not in peer else peer,
             r.get(f"ingest_unsigned_vs_{name}"), f"ratio: unsigned ingest / this{cap}")
        if "error" not in peer:
            rb_peer = peer.get("rebuild") or {}
            part = (f", stopped by the time bound after {rb_peer.get('seconds')} s"
                    if rb_peer.get("complete") is False else "")
            _row(rows, f"{name} fold / rebuild", rb_peer, r.get(f"rebuild_balances_vs_{name}"),
                 f"ratio: reproject balances / this; all projections: "
                 f"{_num(r.get(f'rebuild_all_vs_{name}'), 2)}{cap}{part}{ok}")
    head = ("figure", "events", "seconds", "events/s", "ledgerlog/x", "note")
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) if i in (0, 5) else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    m = res["machine"]
    q = res.get("query", {})
    lines.insert(0, f"ledgerlog bench  size={res['size']}  history events={_num(res['history']['signed']['events'])}  "
                    f"cpus={m['cpus']}  load at start={m['load_average_at_start']}  python={m['python']}")
    for key, label in (("max", "flat out"), ("fixed", "fixed rate")):
        qd = q.get(key, {})
        if "error" in qd or not qd:
            lines.append(f"query {label}: error: {qd.get('error', 'not run')}")
            continue
        lines.append(f"query {label}: offered {_num(qd.get('offered_rate')) if qd.get('offered_rate') else 'max'}/s, "
                     f"got {_num(qd.get('rate'))}/s ({qd['ok']}/{qd['sent']} ok), "
                     f"p50 {qd['p50_ms']} ms, p99 {qd['p99_ms']} ms")
    for key, label in (("all", "all projections"), ("balances", "balances")):
        mem = rb.get(key, {}).get("rss")
        if mem:
            lines.append(f"reproject {label}: {rb[key].get('workers')} process(es), RSS peak {mem['peak_mib']} MiB, "
                         f"first/last quarter mean {mem['first_quarter_mean_mib']}/{mem['last_quarter_mean_mib']} MiB")
    tr = res.get("trees")
    if tr:
        pr, sto, ing_t = tr["proofs"], tr["storage"], tr["ingest_unsigned_events_per_s"]
        lines.append(f"verifiable log: unsigned ingest {_num(ing_t['with_trees'])}/s with trees, "
                     f"{_num(ing_t['without_trees'])}/s without (difference {tr['ingest_cost']:.1%}; upkeep measured "
                     f"inside the ingest: {tr['upkeep_share']:.1%} of its time); proofs/s "
                     f"inclusion {_num(pr['inclusion']['per_s'])} (p50 {pr['inclusion']['p50_ms']} ms, p99 "
                     f"{pr['inclusion']['p99_ms']} ms), consistency {_num(pr['consistency']['per_s'])}; tree store "
                     f"{_num(sto['tree_bytes_per_million_records'])} bytes per 1M records "
                     f"({sto['tree_vs_records']:.1%} of the records)")
    fold = ce.get("fold", {})
    if fold.get("events_per_s"):
        lines.append(f"ceiling: iterate the log's values, decode the fields read (generated decoder), fold balances "
                     f"in a dict, write dirty keys every {fold.get('write_every')} events synced: "
                     f"{_num(fold.get('one_core', {}).get('events_per_s'))}/s on one core, "
                     f"{_num(fold.get('events_per_s'))}/s on {fold.get('processes')}; iterate "
                     f"{_num(fold.get('iterate_per_s'))}/s, +decode {_num(fold.get('iterate_decode_per_s'))}/s "
                     f"(fastavro {_num(fold.get('fastavro_decode_per_s'))}/s)")
    spreads = [(label, d.get("steady", {}).get("spread")) for label, d in (
        ("first fold", rb.get("first_fold", {})), ("reproject all", rb.get("all", {})),
        ("reproject balances", rb.get("balances", {})), ("ceiling", fold),
        ("sqlite rebuild", res.get("peers", {}).get("sqlite", {}).get("rebuild", {})))]
    shown = [f"{label} {x:.0%}" for label, x in spreads if isinstance(x, (int, float))]
    if shown:
        lines.append("rebuild figures are the median of 3 runs of >= "
                     f"{res.get('plan', {}).get('min_seconds', 2)} s; spread (max-min)/median: " + ", ".join(shown))
    lines.append("goals (issues 5, 15, 17):")
    for g in res.get("goals", []):
        mark = {True: "met", False: "MISSED", None: "not measured"}[g["met"]]
        m = g["measured"]
        shown = "-" if m is None else f"{m:,.0f}" if m >= 100 else f"{m:.2f}"
        lines.append(f"  {mark:12s} {g['goal']}: {shown} (goal {g['target']})")
    ed = ce.get("ed25519", {})
    lines.append(f"Ed25519 per core: verify {_num(ed.get('verify_per_s_one_core'))}/s, sign "
                 f"{_num(ed.get('sign_per_s_one_core'))}/s; signed ingest uses "
                 f"{_num(r.get('ingest_signatures_vs_verify_all_cores'), 2)} of all cores' verify rate")
    return "\n".join(lines)


def write(res: dict[str, Any], out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "results.json")
    with open(path, "wb") as f:
        f.write(orjson.dumps(res, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    return path
