"""The HTTP service through a real uvicorn server on 127.0.0.1 and a real HTTP client."""

import contextlib
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from serving_helpers import MAX_LEN, N_ITEMS, item_raw
from torch import nn

from elasticrec.serving import MAX_K, Recommender
from elasticrec.serving.app import create_app


@contextlib.contextmanager
def running(app):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    deadline = time.time() + 20
    while not server.started:
        assert th.is_alive() and time.time() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        th.join(10)
        sock.close()


@pytest.fixture(scope="module")
def client(rec):
    with running(create_app(rec, max_users=1000)) as c:
        yield c


@pytest.fixture(scope="module")
def strict_client(rec):
    with running(create_app(rec, unknown="error")) as c:
        yield c


def ids(resp_json):
    return [d["item"] for d in resp_json["items"]]


def assert_4xx(r, status, *fragments):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert "detail" in body, body
    text = str(body["detail"])
    for f in fragments:
        assert f in text, (f, text)


# ----------------------------------------------------------------------------- happy paths
def test_health_and_openapi(client, rec):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model"] == "sasrec" and h["n_items"] == N_ITEMS
    assert h["streaming"] is False and h["max_users"] == 1000 and "users_held" in h
    spec = client.get("/openapi.json").json()
    assert {"/recommend", "/users/{user_id}/events", "/users/{user_id}/recommend", "/users/{user_id}",
            "/health"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


def test_recommend_matches_python_api(client, rec):
    hist = ["m101", "m102", "m103", "m104"]
    r = client.post("/recommend", json={"history": hist, "k": 5})
    assert r.status_code == 200, r.text
    ref, = rec.recommend([hist], k=5)
    body = r.json()
    assert ids(body) == ref.item_ids and not set(ids(body)) & set(hist)
    np.testing.assert_allclose([d["score"] for d in body["items"]], [s for _, s in ref.items], rtol=1e-5)
    keep = client.post("/recommend", json={"history": hist, "k": N_ITEMS, "exclude_history": False}).json()
    assert set(hist) <= set(ids(keep))


def test_int_ids_match_string_form(client):
    a = client.post("/recommend", json={"history": ["m101", 7], "k": 3}).json()
    assert a["skipped_unknown"] == ["7"] and a["history_len"] == 1


# ----------------------------------------------------------------------------- bad input
def test_unknown_items_skipped_and_reported_or_rejected(client, strict_client):
    r = client.post("/recommend", json={"history": ["m101", "zzz", 5], "k": 3})
    assert r.status_code == 200 and r.json()["skipped_unknown"] == ["zzz", "5"]
    assert_4xx(strict_client.post("/recommend", json={"history": ["m101", "zzz"], "k": 3}),
               422, "unknown item", "'zzz'")
    assert_4xx(strict_client.post("/users/s1/events", json={"item": "zzz"}), 422, "unknown item")
    assert strict_client.get("/users/s1/recommend").status_code == 404  # nothing was created


def test_empty_history_popularity_fallback(client, rec):
    body = client.post("/recommend", json={"history": [], "k": 4}).json()
    assert body["fallback"] == "popularity" and len(body["items"]) == 4
    ref, = rec.recommend([[]], k=4)
    assert ids(body) == ref.item_ids


@pytest.mark.parametrize("k", [0, -3, N_ITEMS + 1, MAX_K + 5])
def test_k_out_of_range(client, k):
    assert_4xx(client.post("/recommend", json={"history": ["m101"], "k": k}), 422, "out of range")
    assert_4xx(client.get("/users/u1/recommend", params={"k": k}), 422, "out of range")
    assert_4xx(client.post("/users/kk/events", json={"item": "m101", "k": k}), 422, "out of range")


def test_long_history_truncated_and_reported(client):
    hist = [item_raw(1 + i % N_ITEMS) for i in range(MAX_LEN + 7)]
    body = client.post("/recommend", json={"history": hist, "k": 3}).json()
    assert (body["history_len"], body["used_len"], body["truncated"]) == (MAX_LEN + 7, MAX_LEN, 7)


@pytest.mark.parametrize("payload", [
    {"history": "m101", "k": 3},
    {"history": ["m101"], "k": "three"},
    {"history": ["m101"], "k": 2.5},
    {"history": [1.5], "k": 3},
    {"history": [None], "k": 3},
    {"history": [["m101"]], "k": 3},
    {"k": 3},
    {"history": ["m101"], "k": 3, "bogus": 1},
])
def test_wrong_types_are_422(client, payload):
    r = client.post("/recommend", json=payload)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_not_json_and_bad_event_body(client):
    r = client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert client.post("/users/a/events", json={"item": 1.5}).status_code == 422
    assert client.post("/users/a/events", json={}).status_code == 422
    assert client.get("/users/u1/recommend", params={"k": "x"}).status_code == 422


def test_unknown_user_404_and_delete(client):
    assert_4xx(client.get("/users/nobody/recommend"), 404, "nobody")
    assert_4xx(client.delete("/users/nobody"), 404, "not held")


# ----------------------------------------------------------------------------- user state
def test_events_equal_recommend_on_accumulated_history(client):
    hist = []
    for i, item in enumerate(["m105", "m106", "m107", "m108", "m109"]):
        hist.append(item)
        r = client.post("/users/sess-1/events", json={"item": item, "k": 5})
        assert r.status_code == 200, r.text
        ev = r.json()
        assert ev["accepted"] and ev["n_events"] == i + 1
        ref = client.post("/recommend", json={"history": hist, "k": 5}).json()
        assert ids(ev["recommendation"]) == ids(ref)
        np.testing.assert_allclose([d["score"] for d in ev["recommendation"]["items"]],
                                   [d["score"] for d in ref["items"]], rtol=1e-5, atol=1e-6)
    got = client.get("/users/sess-1/recommend", params={"k": 5}).json()
    assert got["source"] == "held" and got["history_len"] == 5 and ids(got) == ids(ref)
    ack = client.post("/users/sess-1/events", json={"item": "m110"}).json()
    assert ack == {"user": "sess-1", "accepted": True, "n_events": 6, "skipped_unknown": [],
                   "recommendation": None}
    skipped = client.post("/users/sess-1/events", json={"item": "nope", "k": 2}).json()
    assert not skipped["accepted"] and skipped["n_events"] == 6 and skipped["skipped_unknown"] == ["nope"]
    d = client.delete("/users/sess-1")
    assert d.status_code == 200 and d.json()["deleted"]
    assert client.get("/users/sess-1/recommend").status_code == 404


def test_events_past_max_len_truncate_window_but_exclude_all_seen(client):
    hist = [item_raw(1 + (3 * i) % N_ITEMS) for i in range(MAX_LEN + 4)]
    for item in hist:
        ev = client.post("/users/long/events", json={"item": item, "k": 3}).json()
    rec_ = ev["recommendation"]
    ref = client.post("/recommend", json={"history": hist, "k": 3}).json()
    assert ids(rec_) == ids(ref) and rec_["truncated"] == 4 and rec_["used_len"] == MAX_LEN


def test_new_user_first_event_unknown_gives_popularity(client):
    body = client.post("/users/fresh/events", json={"item": "nope", "k": 3}).json()
    assert body["recommendation"]["fallback"] == "popularity" and body["n_events"] == 0


def test_dataset_user_is_seeded_with_dataset_history(client, rec):
    base = client.get("/users/u4/recommend", params={"k": 4}).json()
    assert base["source"] == "dataset" and ids(base) == rec.recommend_user("u4", 4).item_ids
    full = [rec.item_raw[i] for i in rec.data.sequence(rec.user_index["u4"])]
    ev = client.post("/users/u4/events", json={"item": "m101", "k": 4}).json()
    assert ev["n_events"] == len(full) + 1
    ref = client.post("/recommend", json={"history": full + ["m101"], "k": 4}).json()
    assert ids(ev["recommendation"]) == ids(ref)
    client.delete("/users/u4")


def test_lru_eviction_bound(rec):
    with running(create_app(rec, max_users=3)) as c:
        for u in ["a", "b", "c"]:
            assert c.post(f"/users/{u}/events", json={"item": "m101"}).status_code == 200
        assert c.get("/users/a/recommend").status_code == 200  # a is now the most recent
        c.post("/users/d/events", json={"item": "m102"})  # evicts b (least recently used)
        h = c.get("/health").json()
        assert h["users_held"] == 3 and h["users_evicted"] == 1
        assert c.get("/users/b/recommend").status_code == 404
        for u in ["a", "c", "d"]:
            assert c.get(f"/users/{u}/recommend").json()["source"] == "held"


# ----------------------------------------------------------------------------- streaming branch
class ReencodingStream(nn.Module):
    """Implements the streaming API by re-encoding (stands in for an ELASTIC chunk_align=start
    model): the server's streaming path is exercised against the same scores."""

    supports_streaming = True

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.max_len, self.n_items, self.model_name = inner.max_len, inner.n_items, "fake-stream"
        self.calls = {"prefill": 0, "update": 0, "recommend_from": 0}

    def last_hidden(self, x):
        return self.inner.last_hidden(x)

    def score_all(self, h):
        return self.inner.score_all(h)

    def init_state(self, batch_size=1, device=None):
        return {"items": torch.zeros(batch_size, 0, dtype=torch.long, device=device)}

    def prefill(self, state, items):
        self.calls["prefill"] += 1
        assert items.dim() == 2 and items.dtype == torch.long
        return {"items": torch.cat([state["items"], items[:, (items > 0).any(0)]], 1)}

    def update(self, state, items):
        self.calls["update"] += 1
        assert items.shape == (state["items"].shape[0],)
        return {"items": torch.cat([state["items"], items[:, None]], 1)}

    def state_hidden(self, state):
        x = state["items"][:, -self.max_len:]
        x = torch.nn.functional.pad(x, (self.max_len - x.shape[1], 0))
        return self.inner.last_hidden(x)

    def recommend_from(self, state, k, exclude=None):
        self.calls["recommend_from"] += 1
        s = self.inner.score_all(self.state_hidden(state)).float()
        if exclude is not None:
            s = s.masked_fill(exclude, float("-inf"))
        return s.topk(k, dim=1)

    def state_nbytes(self, state):
        return state["items"].numel() * 8


def test_streaming_branch_events_equal_recommend(rec):
    fake = ReencodingStream(rec.model)
    srec = Recommender(fake, rec.data)
    with running(create_app(srec, max_users=10)) as c:
        assert c.get("/health").json()["streaming"] is True
        hist = []
        for item in ["m120", "m122", "m124", "m126"]:
            hist.append(item)
            ev = c.post("/users/s/events", json={"item": item, "k": 6}).json()
            ref = c.post("/recommend", json={"history": hist, "k": 6}).json()
            assert ids(ev["recommendation"]) == ids(ref)
        assert fake.calls["update"] == 4 and fake.calls["recommend_from"] == 4
        full = [rec.item_raw[i] for i in rec.data.sequence(rec.user_index["u9"])]
        ev = c.post("/users/u9/events", json={"item": "m101", "k": 6}).json()  # seeded by prefill
        assert fake.calls["prefill"] == 1
        ref = c.post("/recommend", json={"history": full + ["m101"], "k": 6}).json()
        assert ids(ev["recommendation"]) == ids(ref)
        got = c.get("/users/u9/recommend", params={"k": 6}).json()
        assert got["source"] == "held" and ids(got) == ids(ref)


def test_store_bytes_per_user(rec):
    from elasticrec.serving.state import UserStore

    store = UserStore(rec, max_users=5, max_seen=16)
    for i in range(40):
        st = store.add_event("x", 1 + i % N_ITEMS)
    assert len(st.seen) == 16 and st.seen[-1] == 1 + 39 % N_ITEMS
    assert store.nbytes(st) == 16 * 4 + MAX_LEN * 8 + 480


def test_real_streaming_elastic_events_equal_recommend(elastic_run):
    from elasticrec.serving import load_run

    srec = load_run(elastic_run)
    assert srec.supports_streaming
    with running(create_app(srec, max_users=10)) as c:
        assert c.get("/health").json()["streaming"] is True
        hist = []
        for item in ["m103", "m105", "m107", "m109", "m111", "m113"]:
            hist.append(item)
            ev = c.post("/users/e/events", json={"item": item, "k": 5}).json()["recommendation"]
            ref = c.post("/recommend", json={"history": hist, "k": 5}).json()
            assert ids(ev) == ids(ref) and not set(ids(ev)) & set(hist)
            np.testing.assert_allclose([d["score"] for d in ev["items"]], [d["score"] for d in ref["items"]],
                                       rtol=1e-3, atol=1e-3)
        # a dataset user short enough that the window holds the whole history: prefill + update
        u = next(u for u in srec.user_index if len(srec.data.sequence(srec.user_index[u])) < MAX_LEN)
        full = [srec.item_raw[i] for i in srec.data.sequence(srec.user_index[u])]
        ev = c.post(f"/users/{u}/events", json={"item": "m101", "k": 5}).json()
        assert ev["n_events"] == len(full) + 1
        ref = c.post("/recommend", json={"history": full + ["m101"], "k": 5}).json()
        assert ids(ev["recommendation"]) == ids(ref)
        assert c.get("/health").json()["users_held"] == 2


def test_oversized_inputs_are_422(client):
    from elasticrec.serving.app import MAX_HISTORY

    r = client.post("/recommend", json={"history": ["m101"] * (MAX_HISTORY + 1), "k": 3})
    assert r.status_code == 422 and r.json()["detail"]
    assert client.get("/users/" + "x" * 300 + "/recommend").status_code == 422


def test_serve_command_wires_options_into_the_app(run_dir, monkeypatch):
    from elasticrec.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert main(["serve", "--run", str(run_dir), "--port", "8123", "--max-users", "7",
                 "--unknown", "error", "--log-level", "warning"]) == 0
    assert (seen["host"], seen["port"], seen["workers"]) == ("127.0.0.1", 8123, 1)
    with running(seen["app"]) as c:
        h = c.get("/health").json()
        assert h["max_users"] == 7 and h["unknown"] == "error" and h["n_items"] == N_ITEMS
        assert c.post("/recommend", json={"history": ["zz"], "k": 2}).status_code == 422


@pytest.mark.slow
def test_serve_command_runs_a_real_server(run_dir):
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "elasticrec", "serve", "--run", str(run_dir), "--port",
                             str(port), "--max-users", "7", "--unknown", "error", "--log-level", "warning"],
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 90
        while True:
            assert proc.poll() is None, "serve exited"
            try:
                h = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except httpx.HTTPError:
                assert time.time() < deadline, "serve did not come up"
                time.sleep(0.3)
        assert h["max_users"] == 7 and h["unknown"] == "error" and h["n_items"] == N_ITEMS
        r = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"history": ["m101"], "k": 2})
        assert r.status_code == 200 and len(r.json()["items"]) == 2
    finally:
        proc.terminate()
        proc.wait(20)


def test_serve_command_bad_run(tmp_path, capsys):
    from elasticrec.cli import main

    assert main(["serve", "--run", str(tmp_path)]) == 1
    assert "not a run directory" in capsys.readouterr().err
