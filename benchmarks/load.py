"""A separate load process: GET /v1/accounts/{a} at a fixed offered rate (or flat out), bounded
in count and time; prints JSON {sent, ok, seconds, rate, p50_ms, p99_ms}."""
from __future__ import annotations

import json
import random
import sys
import time

import httpx


def main(url: str, addresses: list[str], rate: float, count: int, max_seconds: float) -> None:
    lat, ok = [], 0
    rng = random.Random(1)
    start = time.perf_counter()
    with httpx.Client(base_url=url, timeout=10) as http:
        for i in range(count):
            if rate > 0:
                due = start + i / rate
                while (now := time.perf_counter()) < due:
                    time.sleep(min(due - now, 0.001))
            t0 = time.perf_counter()
            r = http.get(f"/v1/accounts/{rng.choice(addresses)}")
            lat.append(time.perf_counter() - t0)
            ok += r.status_code == 200
            if time.perf_counter() - start > max_seconds:
                break
    seconds = time.perf_counter() - start
    lat.sort()
    print(json.dumps({"sent": len(lat), "ok": ok, "seconds": round(seconds, 3), "rate": round(len(lat) / seconds, 1),
                      "p50_ms": round(lat[len(lat) // 2] * 1000, 3), "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 3)}))


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    main(args["url"], args["addresses"], args["rate"], args["count"], args["max_seconds"])
