"""``python -m benchmarks.torture [--trials N] [--seconds S] [--seed X]``: a bounded chaos run.

Kills `ledgerlog` (ingest, a node taking POST /v1/ingest, a node folding at start-up,
reproject, snapshot create, snapshot restore) with SIGKILL at random points and injects EIO and
ENOSPC into a node, on inputs with poison and junk lines mixed in; after each trial checks that no
acknowledged line was lost or duplicated, that projection digests equal a clean replay of the
log, and that no wrong answer was served. Prints one table, writes ``<out>/torture.json``, exits
1 if any invariant failed. ``--trials`` is per kind; no trial starts after ``--seconds``."""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from typing import Any

from .inputs import make_workload
from .stage import prepare
from .trials import KINDS, Outcome, run_trial


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.torture", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=3, help="trials per kind (default 3)")
    p.add_argument("--seconds", type=float, default=300, help="start no trial after this many seconds (default 300)")
    p.add_argument("--seed", type=int, default=None, help="replay a run (default: random, printed)")
    p.add_argument("--events", type=int, default=8000, help="log events in the generated history (default 8000)")
    p.add_argument("--junk", type=int, default=40, help="junk lines mixed into each input (default 40)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    p.add_argument("--out", default="bench-out", help="directory for torture.json (default bench-out)")
    p.add_argument("--keep", default=None, help="work here and keep it (default: a temp dir, removed)")
    p.add_argument("--plant-loss", action="store_true",
                   help="pretend one acknowledged line is missing from each checked log: the run must fail")
    a = p.parse_args(argv)
    a.kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    unknown = [k for k in a.kinds if k not in KINDS]
    if unknown or a.trials < 1 or a.seconds <= 0:
        p.error(f"unknown kinds {unknown}" if unknown else "--trials and --seconds must be positive")
    return a


def _row(label: str, outs: list[Outcome]) -> dict[str, Any]:
    v = [o.verdict for o in outs]
    return {"kind": label, "trials": len(outs), "passed": sum(o.ok for o in outs),
            "kills": sum(o.kills for o in outs), "kills_mid_operation": sum(o.mid for o in outs),
            "faults": sum(o.faults for o in outs), "refused_503": sum(o.refused_503 for o in outs),
            "acknowledged": sum(x.acknowledged for x in v), "lost": sum(x.lost for x in v),
            "duplicated": sum(x.duplicated for x in v), "phantom": sum(x.phantom for x in v),
            "digests_equal": sum(x.digests_equal for x in v), "answers": sum(x.answers for x in v),
            "wrong_answers": sum(x.wrong_answers for x in v), "server_errors": sum(x.server_errors for x in v),
            "seconds": round(sum(o.seconds for o in outs), 1)}


_COLS = (("kind", "kind", 10), ("trials", "trials", 6), ("kills", "kills(mid)", 10), ("faults", "faults", 6), ("refused_503", "503s", 5),
         ("acknowledged", "acked", 7), ("lost", "lost", 4), ("duplicated", "dup", 4),
         ("digests_equal", "digests=", 8), ("wrong_answers", "wrong/asked", 11), ("server_errors", "5xx", 4),
         ("seconds", "s", 6))


def _cell(row: dict[str, Any], key: str) -> str:
    if key == "kills":
        return f"{row['kills']}({row['kills_mid_operation']})"
    if key == "digests_equal":
        return f"{row['digests_equal']}/{row['trials']}"
    if key == "wrong_answers":
        return f"{row['wrong_answers']}/{row['answers']}"
    return str(row[key])


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (_, h, w) in enumerate(_COLS))]
    for r in rows:
        lines.append("  ".join(_cell(r, k).rjust(w) if i else _cell(r, k).ljust(w)
                               for i, (k, _, w) in enumerate(_COLS)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 32)
    print(f"torture: seed {seed} (replay with --seed {seed}), {a.trials} trial(s) per kind of "
          f"{', '.join(a.kinds)}, at most {a.seconds:g} s", flush=True)
    rng = random.Random(seed)
    t0 = time.monotonic()
    work = a.keep or tempfile.mkdtemp(prefix="ll-torture-")
    os.makedirs(work, exist_ok=True)
    outs: list[Outcome] = []
    try:
        from pathlib import Path
        w = make_workload(seed % 100_000, a.events)
        st = prepare(Path(work), w, rng, a.junk)
        st.plant_loss = a.plant_loss
        print(f"  workload: {len(w.history)} history lines + {len(w.poison)} poison + {a.junk} junk per input; "
              f"staged in {time.monotonic() - t0:.1f} s; uninterrupted runs took (s) "
              f"{ {k: round(x, 2) for k, x in st.est.items()} }", flush=True)
        for n in range(a.trials):
            for kind in a.kinds:
                if time.monotonic() - t0 > a.seconds:
                    break
                o = run_trial(st, kind, n, random.Random(rng.getrandbits(64)))
                outs.append(o)
                v = o.verdict
                print(f"  {kind:<9} #{n}: {'ok  ' if o.ok else 'FAIL'} kills {o.kills} ({o.mid} mid-op), "
                      f"faults {o.faults} ({o.refused_503} x 503), acked {v.acknowledged}, lost {v.lost}, dup {v.duplicated}, "
                      f"digests {'equal' if v.digests_equal else 'DIFFER'}, wrong {v.wrong_answers}/{v.answers}, "
                      f"{o.seconds:.1f} s", flush=True)
                for msg in [*o.errors, *v.notes][:5]:
                    print(f"      {msg}", flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    rows = [_row(k, [o for o in outs if o.kind == k]) for k in a.kinds if any(o.kind == k for o in outs)]
    total = _row("total", outs)
    seconds = round(time.monotonic() - t0, 1)
    ok = bool(outs) and all(o.ok for o in outs)
    print()
    print(_table([*rows, total]))
    print(f"\ntrials {total['trials']} (passed {total['passed']}), acknowledged lines {total['acknowledged']}, "
          f"lost {total['lost']}, duplicated {total['duplicated']}, refused-but-logged {total['phantom']}, "
          f"digests equal to a clean replay {total['digests_equal']}/{total['trials']}, "
          f"wrong answers served {total['wrong_answers']} of {total['answers']} (5xx {total['server_errors']}), "
          f"{seconds} s, seed {seed}: {'PASS' if ok else 'FAIL'}")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "torture.json"), "w") as f:
        json.dump({"seed": seed, "ok": ok, "seconds": seconds, "args": {k: v for k, v in vars(a).items()},
                   "kinds": rows, "total": total, "trials": [o.to_dict() for o in outs]}, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
