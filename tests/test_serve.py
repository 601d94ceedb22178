"""decoding/serve.py on a real loopback server: concurrent requests are batched yet each gets the answer it gets
alone, bad payloads get 4xx with a message, and /healthz reports the batching."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_hybrid import scratch_pipeline

from decoding.cli import LoadedRecommender
from decoding.serve import make_server

IND, OFF = "Industrial_and_Scientific", "Office_Products"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    dataset, _, ckpt = scratch_pipeline(tmp_path_factory.mktemp("serve"))
    rec = LoadedRecommender(ckpt, dataset)
    srv, batcher = make_server(rec, port=0, window_ms=200, max_batch=64)  # a wide window: the test must batch
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", rec, batcher
    srv.shutdown()
    srv.server_close()
    batcher.close()


def call(url: str, path: str, body: bytes | None = None, method: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url + path, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post(url: str, payload) -> tuple[int, dict]:
    return call(url, "/recommend", json.dumps(payload).encode())


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server):
    url, rec, batcher = server
    payloads = [{"history": [f"{d}:{j}", f"{d}:{(j * 7) % 20}"], "k": k}
                for j in range(12) for d, k in ((IND, 5), (OFF, 3))]
    alone = [rec.run([rec.resolve(**p)])[0] for p in payloads]
    before = batcher.stats()
    with ThreadPoolExecutor(len(payloads)) as pool:
        got = list(pool.map(lambda p: post(url, p), payloads))
    assert all(status == 200 for status, _ in got)
    for (_, body), one in zip(got, alone):  # same items, same order; scores equal up to padding's float noise
        assert [i["item_id"] for i in body["items"]] == [i["item_id"] for i in one["items"]]
        assert [i["score"] for i in body["items"]] == pytest.approx([i["score"] for i in one["items"]], abs=1e-3)
        assert {**body, "items": None} == {**one, "items": None}
    after = batcher.stats()
    assert after["requests"] - before["requests"] == len(payloads)
    assert after["batches"] - before["batches"] < len(payloads) and after["largest_batch"] > 1


def test_healthz_reports_the_catalogue_and_batching(server):
    url, rec, _ = server
    status, body = call(url, "/healthz")
    assert status == 200 and body["status"] == "ok" and body["items"] == 40
    assert body["domains"] == [IND, OFF] and {"batches", "requests", "mean_batch"} <= set(body["batching"])


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "body is not JSON"),
    (b"[1, 2]", 400, "body must be a JSON object"),
    (json.dumps({"history": [f"{IND}:1"], "colour": "red"}).encode(), 400, "unknown fields ['colour']"),
    (json.dumps({"history": ["nope"]}).encode(), 400, "history: unknown item ids ['nope']"),
    (json.dumps({"history": f"{IND}:1"}).encode(), 400, "must be a non-empty list of item ids"),
    (json.dumps({"history": [f"{IND}:1"], "k": 21}).encode(), 400, "21 is more than the 20 items"),
    (json.dumps({"history": [f"{IND}:1"], "k": "5"}).encode(), 400, "k: must be an integer"),
    (json.dumps({"history": [f"{IND}:1"], "exclude_history": "yes"}).encode(), 400, "must be true or false"),
    (json.dumps({}).encode(), 400, "exactly one of history"),
    (json.dumps({"history": [f"{IND}:1"], "domain": "Toys"}).encode(), 400, "'Toys' is not a domain"),
])
def test_bad_payloads_get_a_400_naming_the_problem(server, body, status, message):
    url, _, _ = server
    got_status, got = call(url, "/recommend", body)
    assert got_status == status and message in got["error"], got


def test_wrong_paths_and_methods(server):
    url, _, _ = server
    assert call(url, "/nope")[0] == 404
    assert call(url, "/healthz", b"{}")[0] == 404  # POST to the GET path
    status, body = call(url, "/recommend", b"{}", method="PUT")
    assert status == 405 and "not allowed" in body["error"]
    # the server still answers after all of the above
    assert post(url, {"history": [f"{OFF}:2"], "k": 2})[0] == 200
