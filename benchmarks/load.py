"""A separate load process: GET /v1/accounts/{a} over one keep-alive connection, flat out
(rate 0) or at a fixed offered rate, bounded in count and time; prints one JSON answer (benchmarks.common.answer).

At a fixed rate, latency is counted from each request's scheduled send time, so a server that
falls behind shows its queueing in the percentiles (no coordinated omission); ``service_*`` is
send-to-answer alone."""
from __future__ import annotations

import json
import random
import sys
import time

import httpx

from benchmarks.common import answer


def _pct(xs: list[float], q: float) -> float:
    return round(xs[min(len(xs) - 1, int(len(xs) * q))] * 1000, 3) if xs else 0.0


def main(url: str, addresses: list[str], rate: float, count: int, max_seconds: float) -> None:
    lat: list[float] = []
    service: list[float] = []
    ok = 0
    rng = random.Random(1)
    with httpx.Client(base_url=url, timeout=10) as http:
        http.get("/v1/health")  # connect outside the measurement
        start = time.perf_counter()
        for i in range(count):
            due = start + i / rate if rate > 0 else time.perf_counter()
            while (now := time.perf_counter()) < due:
                time.sleep(min(due - now, 0.001))
            t0 = time.perf_counter()
            r = http.get(f"/v1/accounts/{rng.choice(addresses)}")
            t1 = time.perf_counter()
            service.append(t1 - t0)
            lat.append(t1 - due)
            ok += r.status_code == 200
            if t1 - start > max_seconds:
                break
        seconds = time.perf_counter() - start
    lat.sort()
    service.sort()
    answer({"offered_rate": rate or None, "sent": len(lat), "ok": ok, "seconds": round(seconds, 3),
            "rate": round(len(lat) / seconds, 1), "p50_ms": _pct(lat, 0.5), "p99_ms": _pct(lat, 0.99),
            "service_p50_ms": _pct(service, 0.5), "service_p99_ms": _pct(service, 0.99)})


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    main(args["url"], args["addresses"], args["rate"], args["count"], args["max_seconds"])
