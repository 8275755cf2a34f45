"""Serving under load: 32 concurrent clients against the demo release, batched vs one request at a time.

Starts ``slmloop serve`` on loopback twice on the same release, once with dynamic
batching (the default) and once with ``--no-batching``; each time N clients
send ``/v1/predict`` requests (texts from the demo's traffic file) back to back for
D seconds. Prints req/s, p50/p95/p99 latency and errors of each, and the
throughput ratio batched / unbatched measured in this run (target: >= 3x, 0 errors).

Then the overload phase, on a mix where a quarter of the requests are chat completions
with mixed max_tokens (4, 8, 16). First the capacity of that mix: N clients back to back
for D seconds (its req/s and p99 are the reference). Then requests arrive on a fixed
schedule (open loop, whatever the server answers) at 3x that capacity for D seconds.
Targets: the admitted requests' p99 within 2x the p99 of the same mix at capacity, the
refused ones (429/503) answered within 100 ms, no other errors, and the server answering
normally right after.

    python benchmarks/serve_load.py [--project DIR] [--clients 32] [--seconds 60] [--shared-cores] [--json FILE]

The load generator and the server run on separate cores (the server on all but the last
core, the load generator on the last), as they would on separate machines: otherwise the
clients' work under overload (connections, refusals to read) takes the server's CPU and
the overload measures the benchmark. ``--shared-cores`` runs both on every core.

Without --project it runs `slmloop demo` into a temporary folder first (~4 min)
and serves the release it made.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _ask(http: Any, i: int, text: str, mixed: bool) -> Any:
    """Request ``i``: with ``mixed``, every fourth a chat completion with max_tokens 4, 8 or 16."""
    if mixed and i % 4 == 3:
        body = {"messages": [{"role": "user", "content": text}], "max_tokens": (4, 8, 16)[i % 3]}
        return await http.post("/v1/chat/completions", json=body)
    return await http.post("/v1/predict", json={"text": text})


async def _load(url: str, texts: list[str], clients: int, seconds: float, mixed: bool = False) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:

        async def client(k: int) -> None:
            i = k
            while time.perf_counter() < deadline:
                text = texts[i % len(texts)]
                i += clients
                t0 = time.perf_counter()
                try:
                    r = await _ask(http, i - clients, text, mixed)
                    if r.status_code != 200 or not ({"label", "choices"} & set(r.json())):
                        errors.append(f"{r.status_code}: {r.text[:200]}")
                        continue
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                    continue
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "error_examples": errors[:3],
        "req_per_s": len(latencies) / elapsed,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p95_ms": _percentile(latencies, 0.95) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
    }


async def _overload(url: str, texts: list[str], rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop arrivals at ``rate`` requests/s for ``seconds``; every fourth a chat with mixed max_tokens."""
    import httpx

    admitted: list[float] = []
    refused: list[float] = []
    other: list[str] = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:

        async def one(i: int) -> None:
            text = texts[i % len(texts)]
            t0 = time.perf_counter()
            try:
                r = await _ask(http, i, text, True)
            except httpx.HTTPError as exc:
                other.append(repr(exc))
                return
            took = time.perf_counter() - t0
            if r.status_code == 200:
                admitted.append(took)
            elif r.status_code in (429, 503):
                refused.append(took)
            else:
                other.append(f"{r.status_code}: {r.text[:200]}")

        tasks = []
        started = time.perf_counter()
        i = 0
        while (now := time.perf_counter() - started) < seconds:
            if now < i / rate:
                await asyncio.sleep(i / rate - now)
            tasks.append(asyncio.create_task(one(i)))
            i += 1
        await asyncio.gather(*tasks)
        after = []
        for k in range(20):  # right after: one client, one request at a time
            t0 = time.perf_counter()
            r = await http.post("/v1/predict", json={"text": texts[k]})
            after.append((r.status_code, time.perf_counter() - t0))
    return {
        "offered_per_s": rate,
        "sent": i,
        "admitted": len(admitted),
        "refused": len(refused),
        "other_errors": len(other),
        "error_examples": other[:3],
        "admitted_p50_ms": _percentile(admitted, 0.50) * 1000,
        "admitted_p99_ms": _percentile(admitted, 0.99) * 1000,
        "refused_p99_ms": _percentile(refused, 0.99) * 1000,
        "after_ok": sum(code == 200 for code, _ in after),
        "after_p50_ms": _percentile([s for _, s in after], 0.50) * 1000,
    }


def _batch_sizes(url: str) -> float:
    import httpx

    text = httpx.get(url + "/metrics").text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("slmloop_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("slmloop_batch_size_count"):
            count = float(line.split()[-1])
    return total / count if count else float("nan")


#: every core this benchmark may use, read once at the start (the load generator later keeps only the last)
CORES = sorted(os.sched_getaffinity(0))


@contextlib.contextmanager
def _serve(project: Path, log: Path, separate: bool, extra: list[str] | None = None) -> Any:
    """A server started on all but the last core (``separate`` and several cores; else on every core), while this
    process — the load generator — keeps the last one."""
    from slmloop.serve.server import ServerProcess

    env: dict[str, str] = {}
    if separate and len(CORES) > 1:
        os.sched_setaffinity(0, CORES[:-1])  # the server is forked with these
        env["OMP_NUM_THREADS"] = str(len(CORES) - 1)  # its torch threads: one per core it has
    try:
        server = ServerProcess(project, log_path=log, extra_args=extra or [], env=env).__enter__()
    finally:
        os.sched_setaffinity(0, CORES[-1:] if separate and len(CORES) > 1 else CORES)
    try:
        yield server
    finally:
        server.__exit__(None, None, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, help="a project with a release (default: run the demo first)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--overload-only", action="store_true", help="skip the batched / unbatched comparison")
    ap.add_argument("--shared-cores", action="store_true", help="server and load generator on every core")
    args = ap.parse_args()

    from slmloop.demo import run_demo
    from slmloop.project import EXAMPLES

    project = args.project
    if project is None:
        project = Path(tempfile.mkdtemp(prefix="serve-load-")) / "demo"
        print(f"no --project: running the demo into {project} first", file=sys.stderr)
        run_demo(project)
    traffic = EXAMPLES["sms-spam"] / "traffic_sms.txt"
    texts = [t.strip() for t in traffic.read_text(encoding="utf-8").splitlines() if t.strip()]

    results: dict[str, Any] = {"clients": args.clients, "seconds": args.seconds, "shared_cores": args.shared_cores}
    separate = not args.shared_cores
    for name, flag in () if args.overload_only else (("batched", "--batching"), ("unbatched", "--no-batching")):
        log = project / ".slmloop" / f"serve-load-{name}.log"
        with _serve(project, log, separate, [flag]) as server:
            asyncio.run(_load(server.url, texts[:64], 4, 3.0))  # warm-up: first shapes, allocator
            r = asyncio.run(_load(server.url, texts, args.clients, args.seconds))
            r["mean_batch"] = _batch_sizes(server.url)
        results[name] = r
        print(
            f"{name:>9}: {r['req_per_s']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  "
            f"p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}  mean batch {r['mean_batch']:.1f}"
        )
    if not args.overload_only:
        ratio = results["batched"]["req_per_s"] / max(results["unbatched"]["req_per_s"], 1e-9)
        results["throughput_ratio"] = ratio
        errors = results["batched"]["errors"] + results["unbatched"]["errors"]
        print(f"throughput batched / unbatched: {ratio:.2f}x (target >= 3x); errors: {errors} (target 0)")

    log = project / ".slmloop" / "serve-load-overload.log"
    with _serve(project, log, separate) as server:
        asyncio.run(_load(server.url, texts[:64], 4, 3.0, mixed=True))
        m = asyncio.run(_load(server.url, texts, args.clients, args.seconds, mixed=True))
        results["mixed"] = m
        print(
            f"    mixed: {m['req_per_s']:7.1f} req/s  p50 {m['p50_ms']:7.1f} ms  p95 {m['p95_ms']:7.1f} ms  "
            f"p99 {m['p99_ms']:7.1f} ms  errors {m['errors']}  (a quarter chats, max_tokens 4/8/16)"
        )
        rate = 3 * m["req_per_s"]
        o = asyncio.run(_overload(server.url, texts, rate, args.seconds))
    o["p99_vs_capacity"] = o["admitted_p99_ms"] / m["p99_ms"]
    results["overload"] = o
    print(
        f" overload: offered {rate:.1f} req/s (3x the mix's capacity) for {args.seconds:.0f} s: {o['sent']} sent, "
        f"{o['admitted']} answered (p50 {o['admitted_p50_ms']:.0f} ms, p99 {o['admitted_p99_ms']:.0f} ms = "
        f"{o['p99_vs_capacity']:.2f}x the mix's p99 at capacity; target <= 2x), {o['refused']} refused "
        f"(p99 {o['refused_p99_ms']:.0f} ms; target <= 100 ms), {o['other_errors']} other errors (target 0); "
        f"right after: {o['after_ok']}/20 answered, p50 {o['after_p50_ms']:.0f} ms"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
