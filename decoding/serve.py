"""``python -m decoding.serve``: a trained checkpoint over HTTP; concurrent requests share one batched beam search.

    python -m decoding.serve --checkpoint artifacts/amazon18/sft_scratch_rl --port 8000
    curl -s localhost:8000/recommend -d '{"history": ["Office_Products:12", "Office_Products:40"], "k": 5}'
    curl -s localhost:8000/healthz

``POST /recommend`` takes a JSON object with exactly one of ``history`` (item ids, oldest first), ``titles`` or
``user``, and optionally ``domain``, ``k`` (default 10), ``num_beams``, ``exclude_history`` — the fields of
``python -m decoding.recommend`` — and answers what that command prints with ``--json``. A bad payload (not JSON,
unknown field, unknown item / user / domain, K too large, ...) gets a 400 with ``{"error": "..."}``; a body over
1 MB a 413. ``GET /healthz`` reports the checkpoint, the catalogue size and the batching counters.

Batching: HTTP threads only parse and check requests; one worker thread owns the model. It takes the first queued
request, waits up to ``window_ms`` for more (at most ``max_batch``), and answers them with one trie beam search per
(K, beams) group (:meth:`decoding.cli.LoadedRecommender.run`). Every request keeps its own future, so answers never
mix, and beam search is batch-invariant, so a request's answer equals the one it gets alone (tested).
Standard library only (``http.server``): no new dependency for a model that answers in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence

from data_builders.cli import UserError, check_range, run_cli
from decoding.cli import LoadedRecommender, Request

FIELDS = ("history", "titles", "user", "domain", "k", "num_beams", "exclude_history")
MAX_BODY = 1 << 20


class Batcher:
    """One worker thread that coalesces queued requests (a ``window_ms`` wait after the first, ``max_batch`` at most)
    into :meth:`LoadedRecommender.run` calls; ``submit`` returns the request's own future."""

    def __init__(self, recommender: LoadedRecommender, window_ms: float = 5.0, max_batch: int = 32):
        self.recommender, self.window, self.max_batch = recommender, window_ms / 1000.0, max_batch
        self.queue: queue.Queue[tuple[Request, Future] | None] = queue.Queue()
        self.batches = self.requests = self.largest = 0
        self.thread = threading.Thread(target=self._loop, name="genrec-batcher", daemon=True)
        self.thread.start()

    def submit(self, request: Request) -> Future:
        future: Future = Future()
        self.queue.put((request, future))
        return future

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch, deadline, stop = [first], time.monotonic() + self.window, False
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    nxt = self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._answer(batch)
            if stop:
                return

    def _answer(self, batch: list[tuple[Request, Future]]) -> None:
        self.batches += 1
        self.requests += len(batch)
        self.largest = max(self.largest, len(batch))
        try:
            answers = self.recommender.run([r for r, _ in batch])
        except Exception as e:  # a bug, not a bad request (requests were checked): every caller gets it
            for _, f in batch:
                f.set_exception(e)
            return
        for (_, f), a in zip(batch, answers):
            f.set_result(a)

    def stats(self) -> dict[str, Any]:
        return {"batches": self.batches, "requests": self.requests, "largest_batch": self.largest,
                "mean_batch": round(self.requests / self.batches, 2) if self.batches else 0.0,
                "window_ms": self.window * 1000, "max_batch": self.max_batch}


def parse_payload(body: bytes, recommender: LoadedRecommender) -> Request:
    """A checked :class:`Request` from a POST body; UserError (-> 400) for anything wrong with it."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"body is not JSON: {e}") from None
    if not isinstance(payload, dict):
        raise UserError(f"body must be a JSON object with fields {list(FIELDS)}, got {type(payload).__name__}")
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise UserError(f"unknown fields {unknown}; allowed: {list(FIELDS)}")
    try:
        return recommender.resolve(**payload)
    except UserError as e:  # the CLI's messages name flags (--history: ...); here the fields are JSON keys
        raise UserError(str(e)[2:] if str(e).startswith("--") else str(e)) from None


def make_handler(recommender: LoadedRecommender, batcher: Batcher, quiet: bool = True, timeout_s: float = 120.0):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as two writes: Nagle + delayed ACK cost 40 ms each

        def _send(self, status: int, obj: dict) -> None:
            data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path != "/healthz":
                return self._send(404, {"error": f"no such path {self.path!r}; GET /healthz, POST /recommend"})
            self._send(200, {"status": "ok", "checkpoint": recommender.checkpoint, "sids": recommender.sid_dir,
                             "items": len(recommender.catalogue), "domains": recommender.domains,
                             "batching": batcher.stats()})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/recommend":
                return self._send(404, {"error": f"no such path {self.path!r}; POST /recommend, GET /healthz"})
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                return self._send(400, {"error": "Content-Length is not a number"})
            if length > MAX_BODY:
                self.close_connection = True
                return self._send(413, {"error": f"body of {length} bytes; at most {MAX_BODY}"})
            try:
                request = parse_payload(self.rfile.read(length), recommender)
            except UserError as e:
                return self._send(400, {"error": str(e)})
            try:
                self._send(200, batcher.submit(request).result(timeout=timeout_s))
            except Exception as e:  # noqa: BLE001 — the worker's failure, reported rather than dropped
                self._send(500, {"error": f"internal error: {type(e).__name__}: {e}"})

        def _not_allowed(self) -> None:
            self._send(405, {"error": f"method {self.command} not allowed; GET /healthz, POST /recommend"})

        do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            if not quiet:
                super().log_message(format, *args)

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # listen backlog (default 5: bursts of concurrent clients were reset)


def make_server(recommender: LoadedRecommender, host: str = "127.0.0.1", port: int = 8000, window_ms: float = 5.0,
                max_batch: int = 32, quiet: bool = True) -> tuple[Server, Batcher]:
    """The server (not started: call ``serve_forever``) and its batcher; the model is loaded here, once."""
    recommender.load_model()
    batcher = Batcher(recommender, window_ms, max_batch)
    return Server((host, port), make_handler(recommender, batcher, quiet)), batcher


def serve_cli(argv: Sequence[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m decoding.serve", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a directory written by sft/train.py, rl/dpo.py or rl/grpo.py")
    p.add_argument("--dataset", default="artifacts/amazon18/dataset", help="the dataset the checkpoint trained on")
    p.add_argument("--sids", default=None, help="a newer version of the checkpoint's SIDs (tokenization.add_items)")
    p.add_argument("--new_item_levels", type=int, default=None, help="as python -m decoding.recommend")
    p.add_argument("--new_item_offset", type=float, default=None, help="as python -m decoding.recommend")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--window_ms", type=float, default=5.0, help="wait after a request for others to batch with it")
    p.add_argument("--max_batch", type=int, default=32, help="requests per beam search at most")
    p.add_argument("--verbose", action="store_true", help="log every request")
    a = p.parse_args(argv)
    check_range("--port", a.port, 0, 65535)
    check_range("--window_ms", a.window_ms, 0)
    check_range("--max_batch", a.max_batch, 1)
    recommender = LoadedRecommender(a.checkpoint, a.dataset, a.sids, a.new_item_levels, a.new_item_offset)
    try:
        server, batcher = make_server(recommender, a.host, a.port, a.window_ms, a.max_batch, quiet=not a.verbose)
    except OSError as e:
        raise UserError(f"--port {a.port}: cannot listen on {a.host}: {e.strerror or e}") from None
    host, port = server.server_address[:2]
    print(f"serving {a.checkpoint} on http://{host}:{port} (POST /recommend, GET /healthz); Ctrl-C stops",
          flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        batcher.close()


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(serve_cli, argv, prog="serve")


if __name__ == "__main__":
    sys.exit(main())
