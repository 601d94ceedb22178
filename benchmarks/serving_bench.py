"""Serving benchmark: ``python -m decoding.serve`` under load on the loopback interface, batched vs one-at-a-time.

    python benchmarks/serving_bench.py --checkpoint artifacts/amazon18/sft_scratch_rl --out benchmarks/results/serving.json

Two servers run side by side as subprocesses (one torch thread each, ``OMP_NUM_THREADS=1``), loaded once from the
same checkpoint: ``batched`` (``--window_ms 5 --max_batch 32``: concurrent requests coalesce into one trie beam
search) and ``unbatched`` (``--max_batch 1``: one beam search per request, the same code path). The client sends
``POST /recommend`` with real histories — ``--payloads`` test rows of the dataset (seeded sample, both domains),
``k`` 10 — from ``c`` threads (one keep-alive connection each) at concurrency 1, 8 and 32, each level bounded by
``--requests`` and ``--seconds``, ``--rounds`` rounds with the two servers interleaved (order alternating) so machine
noise hits both alike. Reported per server and level (median over rounds): throughput (requests / s), latency
p50 / p95 / p99 (ms, as the client sees it), mean batch size (the server's ``/healthz`` counters).

Correctness, on every response: the reference is each payload's answer from the batched server at concurrency 1
(alone in its batch); every other response must have status 200 and the same items in the same order (scores within
1e-3: padding changes float rounding). ``lost`` counts requests without a 200, ``mismatched`` answers that differ —
both must be 0. Malformed payloads (not JSON, wrong types, unknown items, K too large, oversized body, wrong path /
method) are sent to the batched server at the end; each must get its 4xx with a message, and the server must still
answer afterwards.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SERVERS = {"batched": ["--window_ms", "5", "--max_batch", "32"], "unbatched": ["--window_ms", "0", "--max_batch", "1"]}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="artifacts/amazon18/sft_scratch_rl")
    p.add_argument("--dataset", default="artifacts/amazon18/dataset")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/serving.json"))
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--payloads", type=int, default=256, help="distinct test-row histories, cycled")
    p.add_argument("--requests", type=int, default=512, help="requests per level and round at most")
    p.add_argument("--seconds", type=float, default=60.0, help="per level and round at most")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


class ServerProcess:
    """``python -m decoding.serve`` on 127.0.0.1 and a free port; the port is read from its first line."""

    def __init__(self, name: str, args: argparse.Namespace, extra: list[str]):
        self.name = name
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "decoding.serve", "--checkpoint", args.checkpoint, "--dataset", args.dataset,
             "--host", "127.0.0.1", "--port", "0", *extra],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        start = time.monotonic()
        line = self.proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not m:
            self.proc.kill()
            raise SystemExit(f"{name} server did not start: {line!r} {self.proc.stderr.read()[-2000:]}")
        self.port, self.load_s = int(m.group(1)), time.monotonic() - start
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # drain: a full pipe would block it

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
            ) -> tuple[int, dict]:
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
    r = conn.getresponse()
    return r.status, json.loads(r.read() or b"{}")


def healthz(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        return request(conn, "GET", "/healthz")[1]
    finally:
        conn.close()


def run_level(port: int, payloads: list[bytes], concurrency: int, n: int, seconds: float
              ) -> tuple[list[tuple[int, int, dict | None, float]], float]:
    """``n`` requests (payload index i % len) from ``concurrency`` threads: [(index, status, body, ms)], wall s."""
    jobs = list(range(n))
    lock, out = threading.Lock(), []
    deadline = time.monotonic() + seconds

    def worker(w: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine = jobs[w::concurrency]
        for j in mine:
            if time.monotonic() > deadline:
                break
            i = j % len(payloads)
            t0 = time.perf_counter()
            try:
                status, body = request(conn, "POST", "/recommend", payloads[i])
            except (OSError, http.client.HTTPException, json.JSONDecodeError):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                status, body = -1, None
            ms = 1000 * (time.perf_counter() - t0)
            with lock:
                out.append((i, status, body, ms))
        conn.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    return out, time.perf_counter() - start


def same_answer(a: dict, b: dict) -> bool:
    ia, ib = a.get("items") or [], b.get("items") or []
    return [x["item_id"] for x in ia] == [x["item_id"] for x in ib] and \
        all(abs(x["score"] - y["score"]) <= 1e-3 for x, y in zip(ia, ib))


MALFORMED = [
    ("not JSON", "POST", "/recommend", b"{nope", 400),
    ("a list, not an object", "POST", "/recommend", b"[1, 2, 3]", 400),
    ("unknown field", "POST", "/recommend", b'{"history": ["x"], "colour": "red"}', 400),
    ("unknown item", "POST", "/recommend", b'{"history": ["no-such-item"]}', 400),
    ("history not a list", "POST", "/recommend", b'{"history": "Office_Products:1"}', 400),
    ("k a string", "POST", "/recommend", b'{"user": "?", "k": "10"}', 400),
    ("k too large", "POST", "/recommend", None, 400),  # filled in with a real item below
    ("nothing to recommend from", "POST", "/recommend", b"{}", 400),
    ("unknown domain", "POST", "/recommend", None, 400),
    ("body over 1 MB", "POST", "/recommend", b"{" + b" " * (1 << 20) + b"}", 413),
    ("wrong path", "POST", "/recommendations", b"{}", 404),
    ("wrong method", "PUT", "/recommend", b"{}", 405),
]


def malformed(port: int, item: str) -> list[dict]:
    out = []
    for name, method, path, body, expect in MALFORMED:
        if name == "k too large":
            body = json.dumps({"history": [item], "k": 100000}).encode()
        if name == "unknown domain":
            body = json.dumps({"history": [item], "domain": "Toys"}).encode()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            status, got = request(conn, method, path, body)
        finally:
            conn.close()
        out.append({"case": name, "status": status, "expected": expect, "ok": status == expect and "error" in got,
                    "error": got.get("error", "")[:160]})
    return out


def percentile(ms: list[float], q: float) -> float | None:
    return round(float(np.percentile(ms, q)), 2) if ms else None


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(REPO))
    from data_builders.dataset import load_rec_dataset

    test = load_rec_dataset(args.dataset).splits["test"].to_list()
    rows = random.Random(args.seed).sample(range(len(test)), min(args.payloads, len(test)))
    payloads = [json.dumps({"history": test[i]["history"], "k": args.k}).encode() for i in rows]

    servers = {name: ServerProcess(name, args, extra) for name, extra in SERVERS.items()}
    try:
        # references: every payload alone (batched server, concurrency 1, nothing else in flight)
        ref_out, _ = run_level(servers["batched"].port, payloads, 1, len(payloads), 1e9)
        reference = {i: body for i, status, body, _ in ref_out if status == 200}
        if len(reference) != len(payloads):
            raise SystemExit(f"{len(payloads) - len(reference)} reference requests failed")
        levels: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in args.concurrency} for name in servers}
        for c in args.concurrency:
            for r in range(args.rounds):
                order = list(servers) if r % 2 == 0 else list(servers)[::-1]
                for name in order:
                    port = servers[name].port
                    before = healthz(port)["batching"]
                    out, wall = run_level(port, payloads, c, args.requests, args.seconds)
                    after = healthz(port)["batching"]
                    ok = [(i, body, ms) for i, status, body, ms in out if status == 200]
                    ms = [x[2] for x in ok]
                    batches = after["batches"] - before["batches"]
                    levels[name][c].append({
                        "requests": len(out), "wall_s": round(wall, 3),
                        "throughput_rps": round(len(ok) / wall, 2) if wall else None,
                        "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "p99_ms": percentile(ms, 99),
                        "mean_batch": round((after["requests"] - before["requests"]) / batches, 2) if batches else 0,
                        "lost": len(out) - len(ok),
                        "mismatched": sum(not same_answer(body, reference[i]) for i, body, _ in ok),
                    })
                    print(f"{name:>9} c={c:<3} round {r}: {levels[name][c][-1]}", flush=True)
        bad = malformed(servers["batched"].port, json.loads(payloads[0])["history"][0])
        still = run_level(servers["batched"].port, payloads[:4], 1, 4, 60)[0]
        alive = all(s == 200 and same_answer(b, reference[i]) for i, s, b, _ in still)
        load_s = {name: round(s.load_s, 2) for name, s in servers.items()}
    finally:
        for s in servers.values():
            s.stop()

    def summary(runs: list[dict]) -> dict:
        keys = ("throughput_rps", "p50_ms", "p95_ms", "p99_ms", "mean_batch")
        return {**{k: statistics.median(r[k] for r in runs) for k in keys},
                "requests": sum(r["requests"] for r in runs), "lost": sum(r["lost"] for r in runs),
                "mismatched": sum(r["mismatched"] for r in runs), "rounds": runs}

    results = {name: {str(c): summary(runs) for c, runs in by_c.items()} for name, by_c in levels.items()}
    speedup = {str(c): round(statistics.median(
        b["throughput_rps"] / u["throughput_rps"] for b, u in zip(levels["batched"][c], levels["unbatched"][c])), 2)
        for c in args.concurrency}
    report = {
        "command": "python benchmarks/serving_bench.py " + " ".join(sys.argv[1:]),
        "checkpoint": args.checkpoint, "dataset": args.dataset, "k": args.k, "payloads": len(payloads),
        "servers": {name: " ".join(extra) for name, extra in SERVERS.items()}, "server_threads": 1,
        "cpu_count": os.cpu_count(), "server_load_s": load_s,
        "results": results,
        "batched_throughput_speedup": speedup,  # median over rounds of batched / unbatched, paired by round
        "lost_total": sum(r["lost"] for s in results.values() for r in s.values()),
        "mismatched_total": sum(r["mismatched"] for s in results.values() for r in s.values()),
        "malformed": bad, "malformed_all_ok": all(b["ok"] for b in bad), "answers_after_malformed": alive,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("results", "malformed")}, indent=2))
    for name, by_c in results.items():
        for c, r in by_c.items():
            print(f"{name:>9} c={c:<3} {r['throughput_rps']:>7.1f} req/s  p50 {r['p50_ms']:>7.1f}  p95 "
                  f"{r['p95_ms']:>7.1f}  p99 {r['p99_ms']:>7.1f} ms  batch {r['mean_batch']:>5.1f}  lost {r['lost']}  "
                  f"mismatched {r['mismatched']}")


if __name__ == "__main__":
    main()
