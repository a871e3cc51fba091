"""``so8t serve``: a real uvicorn server on 127.0.0.1 and a real HTTP client, a tiny GGUF in a real registry.

Versions of one model differ in their calibration: v1 a fitted one, v2 one that allows everything
(tau_deny above 1, tau_escalate 0), v3 one fitted on another GGUF (must never be swapped in). The
decisions are checked against :class:`so8t.serving.decide.Decider` (itself checked against calibration's
scorer in test_decide.py), the swap time against the issue's 2 s.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from so8t.base_models import sha256_file
from so8t.cli import main
from so8t.decision import DecisionPrompt
from tests.fixtures.required import require_module

REPO = Path(__file__).resolve().parents[2]
require_module("llama_cpp")
PROMPT = DecisionPrompt(system="You review requests. Answer with one word: ALLOW, ESCALATE or DENY.",
                        user_template="Request: {text}\nDecision:")
TEXTS = [json.loads(x)["text"] for x in (REPO / "data" / "safety_val.jsonl").read_text(encoding="utf-8").splitlines()[:12]]
SWAP_DEADLINE_S = 2.0


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SO8T_REGISTRY", raising=False)
    monkeypatch.delenv("SO8T_API_KEY", raising=False)


@pytest.fixture(scope="module")
def model(tiny_llama, tmp_path_factory) -> dict:
    from so8t.export.gguf import convert_to_gguf

    from so8t.calibrate.scoring import score_gguf
    from tests.integration.test_evaluate import _between, _probs

    d = tmp_path_factory.mktemp("serve")
    gguf = convert_to_gguf(tiny_llama, d / "convert", ["Q8_0"], name="tinyserve", fidelity=False).path("Q8_0")
    sha = sha256_file(gguf)
    (d / "prompt.json").write_text(json.dumps(PROMPT.model_dump()))
    p = _probs(score_gguf(gguf, TEXTS, ["ALLOW"] * len(TEXTS), use_cache=False, n_threads=1, n_ctx=1024, prompt=PROMPT,
                          progress=False).z, 0.5)
    tau_deny = _between(p[:, 2], 0.65)
    tau_escalate = _between(p[p[:, 2] < tau_deny, 0], 0.4)
    cals = {
        "fitted": {"temperature": 0.5, "tau_deny": tau_deny, "tau_escalate": tau_escalate, "model_sha256": sha},
        "allow_all": {"temperature": 1.0, "tau_deny": 1.5, "tau_escalate": 0.0, "model_sha256": sha},
        "other_model": {"temperature": 1.0, "tau_deny": 0.5, "tau_escalate": 0.5, "model_sha256": "0" * 64},
    }
    for k, v in cals.items():
        (d / f"{k}.json").write_text(json.dumps(v))
    return {"gguf": gguf, "dir": d, "cals": cals}


def _publish(root: Path, model: dict, cal: str):
    from registry import Registry

    return Registry(root).publish("so8t-tiny", {
        "gguf/tinyserve_Q8_0.gguf": model["gguf"], "gguf/decision_prompt.json": model["dir"] / "prompt.json",
        "calibration/calibration_results.json": model["dir"] / f"{cal}.json"})


class Running:
    """A uvicorn server in a thread, as ``so8t serve`` runs it."""

    def __init__(self, **cfg) -> None:
        import uvicorn

        from so8t.serving.serve import Metrics, ModelHolder, ServeConfig, create_app

        self.cfg = ServeConfig(**{"n_threads": 1, "n_ctx": 1024, "poll_interval": 0.1, **cfg})
        self.metrics = Metrics()
        self.holder = ModelHolder(self.cfg, self.metrics)
        self.holder.start()
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.cfg, self.holder, self.metrics), host="127.0.0.1",
                                                    port=0, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def close(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture()
def running():
    servers: list[Running] = []

    def start(**cfg) -> Running:
        s = Running(**cfg)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def _wait_for(client: httpx.Client, version: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        if client.get("/v1/model").json().get("version") == version:
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError(f"{version} not served after 10 s")


def test_follows_promotion_and_rollback_within_2s_without_failing_a_request(model, tmp_path, running):
    from registry import Registry
    from so8t.serving.decide import Decider

    root = tmp_path / "reg"
    reg = Registry(root)
    v1 = _publish(root, model, "fitted").version
    v2 = _publish(root, model, "allow_all").version
    reg.promote("so8t-tiny", v1, "production", reason="gate passed", evidence={"ece": 0.03})
    srv = running(model="so8t-tiny", registry_root=str(root))
    c = srv.client

    with Decider(str(model["gguf"]), str(model["dir"] / "fitted.json"), str(model["dir"] / "prompt.json"),
                 n_threads=1, n_ctx=1024) as ref:
        want = [d.decision for d in ref.decide(TEXTS)]
    r = c.post("/v1/decide", json={"texts": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["decision"] for d in body["decisions"]] == want and body["version"] == v1
    assert len(set(want)) >= 2, "the fitted calibration should not decide everything alike"
    one = c.post("/v1/decide", json={"text": TEXTS[0]}).json()
    assert one["decision"] == want[0] and set(one["probabilities"]) == {"ALLOW", "ESCALATE", "DENY"}
    info = c.get("/v1/model").json()
    assert info["version"] == v1 and info["gate"]["evidence"] == {"ece": 0.03} and info["stale"] is False
    assert info["thresholds"]["tau_deny"] == model["cals"]["fitted"]["tau_deny"]

    # requests keep flowing while the alias moves: none may fail, and none that starts after a change is
    # committed may be decided by the version it replaced
    stop, failures, answered = threading.Event(), [], []

    def hammer() -> None:
        with httpx.Client(base_url=srv.url, timeout=60) as h:
            while not stop.is_set():
                t0 = time.monotonic()
                resp = h.post("/v1/decide", json={"text": TEXTS[1]})
                if resp.status_code == 200:
                    answered.append((t0, time.monotonic(), resp.json()["version"]))
                else:
                    failures.append(resp.status_code)

    workers = [threading.Thread(target=hammer) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.3)
        t_promote = time.monotonic()
        reg.promote("so8t-tiny", v2, "production", reason="test")
        t_promoted = time.monotonic()
        first = c.post("/v1/decide", json={"texts": TEXTS}).json()
        took_promote = time.monotonic() - t_promoted
        assert first["version"] == v2 and all(d["decision"] == "ALLOW" for d in first["decisions"])
        time.sleep(0.3)
        t_rollback = time.monotonic()
        reg.rollback("so8t-tiny", reason="test")
        t_rolled = time.monotonic()
        assert c.post("/v1/decide", json={"text": TEXTS[0]}).json()["version"] == v1
        took_rollback = time.monotonic() - t_rolled
        time.sleep(0.3)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert took_promote < SWAP_DEADLINE_S and took_rollback < SWAP_DEADLINE_S, (took_promote, took_rollback)
    assert failures == [] and len(answered) > 10
    for start, end, version in answered:  # the version was production at some moment of the request
        allowed = {v1} if end < t_promote else {v2} if t_promoted < start and end < t_rollback else \
            {v1} if start > t_rolled else {v1, v2}
        assert version in allowed, (start, end, version, t_promote, t_promoted, t_rollback, t_rolled)
    assert {v for *_, v in answered} == {v1, v2}
    assert [d["decision"] for d in c.post("/v1/decide", json={"texts": TEXTS}).json()["decisions"]] == want

    metrics = c.get("/metrics").text
    assert "so8t_model_swaps_total 3.0" in metrics
    assert 'so8t_decisions_total{decision="ALLOW"}' in metrics
    assert 'so8t_requests_total{route="/v1/decide",status="200"}' in metrics
    assert "so8t_request_seconds_bucket" in metrics


def _gauge(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.parametrize("warm", [2, 1])
def test_warm_versions_make_flips_cheap_and_bound_the_models_loaded(model, tmp_path, running, warm):
    """The previous production stays loaded (``warm_versions`` 2): flipping back swaps without loading; a third
    version evicts the least recently served one, whose model is closed; with 1 every replaced model is closed.
    A warm version whose files changed on disk is loaded and checked again."""
    from registry import Registry
    from so8t.serving.decide import Decider

    root = tmp_path / "reg"
    reg = Registry(root)
    v1 = _publish(root, model, "fitted").version
    v2 = _publish(root, model, "allow_all").version
    third = dict(model["cals"]["fitted"], temperature=0.75)
    (tmp_path / "third.json").write_text(json.dumps(third))
    v3 = reg.publish("so8t-tiny", {
        "gguf/tinyserve_Q8_0.gguf": model["gguf"], "gguf/decision_prompt.json": model["dir"] / "prompt.json",
        "calibration/calibration_results.json": tmp_path / "third.json"}).version
    reg.promote("so8t-tiny", v1, "production")
    srv = running(model="so8t-tiny", registry_root=str(root), warm_versions=warm)
    c = srv.client
    with Decider(str(model["gguf"]), str(model["dir"] / "fitted.json"), str(model["dir"] / "prompt.json"),
                 n_threads=1, n_ctx=1024) as ref:
        want = [d.probabilities for d in ref.decide(TEXTS[:3])]

    def open_models() -> int:
        return sum(1 for d in list(srv.holder._live) if not d.closed)

    served = [v1]
    for target in (v2, v1, v3, v1, v2):
        reg.promote("so8t-tiny", target, "production")
        assert c.post("/v1/decide", json={"text": TEXTS[0]}).json()["version"] == target  # read-your-writes
        served.append(target)
        expect = min(warm, len(set(served)))
        assert open_models() == expect and _gauge(c, "so8t_models_loaded") == expect, served
        info = c.get("/v1/model").json()
        assert info["warm_versions"] == ([served[-2]] if warm == 2 else [])
    # v2->v1 and v3->v1 were warm with 2; nothing is with 1
    assert _gauge(c, "so8t_model_swaps_warm_total") == (2 if warm == 2 else 0)
    assert _gauge(c, "so8t_model_swaps_total") == 6
    if warm == 1:
        return
    # the warm v1 still decides exactly as a fresh load does (its prefix cache survived idling)
    reg.promote("so8t-tiny", v1, "production")
    got = c.post("/v1/decide", json={"texts": TEXTS[:3]}).json()
    assert got["version"] == v1 and [d["probabilities"] for d in got["decisions"]] == want
    assert _gauge(c, "so8t_model_swaps_warm_total") == 3
    # a warm version whose checked files changed since it was loaded is loaded again, not trusted
    warm_copy = srv.holder._warm[v2]
    blob = Path(warm_copy.decider.calibrated.model.gguf)
    os.utime(blob, ns=(blob.stat().st_atime_ns, blob.stat().st_mtime_ns + 1_000_000_000))
    reg.promote("so8t-tiny", v2, "production")
    assert c.post("/v1/decide", json={"text": TEXTS[0]}).json()["version"] == v2
    assert _gauge(c, "so8t_model_swaps_warm_total") == 3 and warm_copy.decider.closed
    assert srv.holder.current is not warm_copy and open_models() == 2


def test_a_version_that_fails_its_check_is_not_swapped_in(model, tmp_path, running):
    from registry import Registry

    root = tmp_path / "reg"
    reg = Registry(root)
    v1 = _publish(root, model, "fitted").version
    bad = _publish(root, model, "other_model").version
    reg.promote("so8t-tiny", v1, "production")
    srv = running(model="so8t-tiny", alias="production", registry_root=str(root))
    c = srv.client
    assert c.get("/readyz").json() == {"ready": True, "version": v1, "alias_version": v1, "stale": False, "error": None}
    reg.promote("so8t-tiny", bad, "production")
    deadline = time.monotonic() + 10
    while c.get("/readyz").json()["error"] is None:  # stale from the moment the alias moves; the error once loaded
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ready = c.get("/readyz")
    assert ready.status_code == 200  # still serving: not taken out of rotation
    doc = ready.json()
    assert doc["version"] == v1 and doc["alias_version"] == bad and "fitted on another model" in doc["error"]
    r = c.post("/v1/decide", json={"text": TEXTS[0]})
    assert r.status_code == 200 and r.json()["version"] == v1
    m = c.get("/metrics").text
    assert "so8t_model_swap_failures_total 1.0" in m and "so8t_serving_stale 1.0" in m
    from so8t.serving.serve import ServiceNotFollowing, wait_until_served

    with pytest.raises(ServiceNotFollowing, match=rf"does not serve so8t-tiny {bad} after 0.5 s: it serves so8t-tiny "
                                                  rf"{v1} \(its alias names {bad}; .*fitted on another model"):
        wait_until_served(srv.url, "so8t-tiny", bad, timeout_s=0.5)
    assert wait_until_served(srv.url, "so8t-tiny", v1, timeout_s=5)["version"] == v1
    time.sleep(0.5)  # not retried on every poll
    assert "so8t_model_swap_failures_total 1.0" in c.get("/metrics").text
    reg.rollback("so8t-tiny")
    _wait_for(c, v1)
    deadline = time.monotonic() + 10
    while c.get("/readyz").json()["stale"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_auth_limits_and_one_line_errors(model, tmp_path, running, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    gdir = tmp_path / "m"
    gdir.mkdir()
    g = gdir / "tiny.gguf"
    shutil.copyfile(model["gguf"], g)
    shutil.copyfile(model["dir"] / "fitted.json", gdir / "calibration_results.json")
    shutil.copyfile(model["dir"] / "prompt.json", gdir / "decision_prompt.json")
    token = "s3cret-token-never-logged"
    srv = running(model=str(g), api_key=token, max_queue=1, max_body_bytes=4096, max_batch=4)
    c, auth = srv.client, {"Authorization": f"Bearer {token}"}
    assert c.get("/healthz").status_code == 200 and c.get("/readyz").json()["ready"] is True
    r = c.post("/v1/decide", json={"text": "hi"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert c.post("/v1/decide", json={"text": "hi"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = c.post("/v1/decide", json={"text": "hi"}, headers=auth)
    assert ok.status_code == 200 and ok.json()["version"] is None
    cases = [
        (b"{not json", 422, "body: not JSON"),
        (json.dumps({"txt": "a"}).encode(), 422, "txt: Extra inputs are not permitted"),
        (json.dumps({}).encode(), 422, "either 'text' or 'texts'"),
        (json.dumps({"text": 5}).encode(), 422, "text: Input should be a valid string"),
        (json.dumps({"text": "  "}).encode(), 422, "text: empty or only whitespace"),
        (json.dumps({"texts": []}).encode(), 422, "texts: empty list"),
        (json.dumps({"texts": ["a"] * 5}).encode(), 422, "over the limit of 4"),
        (json.dumps({"text": "a" * 5000}).encode(), 413, "over the limit of 4096"),
    ]
    for body, status, msg in cases:
        r = c.post("/v1/decide", content=body, headers={**auth, "content-type": "application/json"})
        assert r.status_code == status, (body[:40], r.text)
        err = r.json()["error"]["message"]
        assert msg in err and "\n" not in err, err
    # the queue: hold the model so the one admitted request waits; the next one is refused at once
    lock = srv.holder.current.decider._lock
    lock.acquire()
    try:
        first: list[httpx.Response] = []
        t = threading.Thread(target=lambda: first.append(httpx.post(srv.url + "/v1/decide", json={"text": "a"},
                                                                    headers=auth, timeout=60)))
        t.start()
        deadline = time.monotonic() + 10
        while 'so8t_queue_depth 1.0' not in c.get("/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        busy = c.post("/v1/decide", json={"text": "b"}, headers=auth)
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    finally:
        lock.release()
    t.join(timeout=60)
    assert first[0].status_code == 200
    chat = c.post("/v1/chat/completions", headers=auth,
                  json={"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4, "temperature": 0})
    assert chat.status_code == 200, chat.text
    doc = chat.json()
    assert doc["object"] == "chat.completion" and isinstance(doc["choices"][0]["message"]["content"], str)
    assert doc["usage"]["completion_tokens"] <= 4
    with httpx.stream("POST", srv.url + "/v1/chat/completions", headers=auth, timeout=60,
                      json={"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4, "temperature": 0,
                            "stream": True}) as streamed:
        assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
        events = [ln[len("data: "):] for ln in streamed.iter_lines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) >= 2
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    streamed_text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks)
    assert streamed_text == doc["choices"][0]["message"]["content"]  # greedy: the same words, in pieces
    assert 'so8t_queue_depth 0.0' in c.get("/metrics").text  # the stream's admission was released at its end
    # decisions after a chat completion are unchanged (the decision prefix is rebuilt)
    again = c.post("/v1/decide", json={"text": "hi"}, headers=auth).json()
    assert again["probabilities"] == ok.json()["probabilities"]
    m = c.get("/metrics").text
    assert 'so8t_errors_total{kind="auth"} 2.0' in m and 'so8t_errors_total{kind="overloaded"} 1.0' in m
    assert token not in m and token not in caplog.text and token not in json.dumps(c.get("/v1/model", headers=auth).json())


@pytest.mark.parametrize("argv, pattern", [
    (["serve", "--model", "nosuch", "--registry_root", "{root}"], r"--model nosuch@production: .*not"),
    (["serve", "--model", "{gguf}", "--alias", "production"], r"--alias production: .* is a GGUF file"),
    (["serve", "--model", "so8t-tiny@production", "--alias", "staging", "--registry_root", "{root}"],
     r"--alias staging: .*names its reference"),
    (["serve", "--model", "{gguf}", "--port", "70000"], r"port"),
    (["serve", "--model", "{gguf}", "--poll_interval", "nan"], r"poll_interval"),
])
def test_serve_bad_input_is_one_line_exit_2_before_listening(model, tmp_path, capsys, argv, pattern):
    import re

    argv = [a.format(root=tmp_path / "reg", gguf=model["gguf"]) for a in argv]
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1 and re.search(pattern, lines[0]), err


def test_the_command_serves_and_stops_on_sigterm(model, tmp_path):
    """``so8t serve`` as a user starts it: a process, a port, SIGTERM; the key reaches no log."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    gdir = tmp_path / "m"
    gdir.mkdir()
    shutil.copyfile(model["gguf"], gdir / "tiny.gguf")
    shutil.copyfile(model["dir"] / "fitted.json", gdir / "calibration_results.json")
    shutil.copyfile(model["dir"] / "prompt.json", gdir / "decision_prompt.json")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "k3y-from-the-environment"
    env = {**os.environ, "SO8T_API_KEY": token, "SO8T_LOG_DIR": str(tmp_path / "logs")}
    proc = subprocess.Popen([sys.executable, "-m", "so8t.cli", "serve", "--model", str(gdir / "tiny.gguf"), "--port",
                             str(port), "--n_threads", "1", "--n_ctx", "1024"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/decide", json={"text": TEXTS[0]},
                       headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200 and r.json()["decision"] in ("ALLOW", "ESCALATE", "DENY")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status says what stopped it
    assert proc.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in out, out
    assert "POST /v1/decide" in out  # the access log
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").rglob("*") if p.is_file())
    assert token not in out and token not in logs


# ----------------------------------------------------------------------------- the HTTP bad-input corpus
TOKEN = "corpus-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
_J = lambda obj: json.dumps(obj).encode()  # noqa: E731
HTTP_CASES: list[tuple[str, str, bytes, dict | None, int, str]] = [
    # id, route, body, headers (None: AUTH), status, message part
    ("no-token", "/v1/decide", _J({"text": "a"}), {"content-type": "application/json"}, 401, "bearer token"),
    ("wrong-token", "/v1/decide", _J({"text": "a"}), {"Authorization": "Bearer nope"}, 401, "bearer token"),
    ("basic-auth", "/v1/decide", _J({"text": "a"}), {"Authorization": "Basic Y29ycHVzOnRva2Vu"}, 401, "bearer token"),
    ("token-on-model", "/v1/model", b"", {}, 401, "bearer token"),
    ("not-json", "/v1/decide", b"{text: a}", None, 422, "body: not JSON"),
    ("not-utf8", "/v1/decide", b'{"text": "caf\xe9"}', None, 422, "body: not JSON"),
    ("empty-body", "/v1/decide", b"", None, 422, "body: empty"),
    ("json-null", "/v1/decide", b"null", None, 422, "body: empty"),
    ("array-body", "/v1/decide", _J(["a"]), None, 422, "Input should be a valid dictionary"),
    ("string-body", "/v1/decide", _J("a"), None, 422, "Input should be a valid dictionary"),
    ("null-text", "/v1/decide", _J({"text": None}), None, 422, "either 'text' or 'texts'"),
    ("number-text", "/v1/decide", _J({"text": 1}), None, 422, "text: Input should be a valid string"),
    ("object-text", "/v1/decide", _J({"text": {"a": 1}}), None, 422, "text: Input should be a valid string"),
    ("blank-text", "/v1/decide", _J({"text": "\n\t "}), None, 422, "text: empty or only whitespace"),
    ("both", "/v1/decide", _J({"text": "a", "texts": ["b"]}), None, 422, "either 'text' or 'texts'"),
    ("unknown-field", "/v1/decide", _J({"text": "a", "lang": "en"}), None, 422, "lang: Extra inputs are not permitted"),
    ("texts-not-list", "/v1/decide", _J({"texts": "a"}), None, 422, "texts: Input should be a valid list"),
    ("texts-number", "/v1/decide", _J({"texts": ["a", 2]}), None, 422, "texts.1: Input should be a valid string"),
    ("texts-empty", "/v1/decide", _J({"texts": []}), None, 422, "texts: empty list"),
    ("texts-blank-item", "/v1/decide", _J({"texts": ["a", " "]}), None, 422, "texts[1]: empty or only whitespace"),
    ("texts-too-many", "/v1/decide", _J({"texts": ["a"] * 5}), None, 422, "over the limit of 4"),
    ("text-too-long", "/v1/decide", _J({"text": "a " * 16_001}), None, 422, "characters, over the limit"),
    ("body-too-large", "/v1/decide", _J({"text": "a" * 70_000}), None, 413, "over the limit of 65536"),
    ("chat-no-messages", "/v1/chat/completions", _J({}), None, 422, "messages: Field required"),
    ("chat-empty-messages", "/v1/chat/completions", _J({"messages": []}), None, 422, "messages: List should have"),
    ("chat-message-no-role", "/v1/chat/completions", _J({"messages": [{"content": "hi"}]}), None, 422,
     "messages.0.role: Field required"),
    ("chat-content-number", "/v1/chat/completions", _J({"messages": [{"role": "user", "content": 3}]}), None, 422,
     "messages.0.content: Input should be a valid string"),
    ("chat-max-tokens-0", "/v1/chat/completions", _J({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}),
     None, 422, "max_tokens: Input should be greater than or equal to 1"),
    ("chat-temperature-high", "/v1/chat/completions",
     _J({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}), None, 422, "temperature"),
    ("chat-over-context", "/v1/chat/completions", _J({"messages": [{"role": "user", "content": "word " * 3000}],
                                                       "stream": True}), None, 422, "messages: Requested tokens"),
    ("chat-not-json", "/v1/chat/completions", b"[", None, 422, "body: not JSON"),
]


@pytest.fixture(scope="module")
def corpus_server(model, tmp_path_factory):
    gdir = tmp_path_factory.mktemp("corpus_model")
    shutil.copyfile(model["gguf"], gdir / "tiny.gguf")
    shutil.copyfile(model["dir"] / "fitted.json", gdir / "calibration_results.json")
    shutil.copyfile(model["dir"] / "prompt.json", gdir / "decision_prompt.json")
    srv = Running(model=str(gdir / "tiny.gguf"), api_key=TOKEN, max_body_bytes=65536, max_batch=4)
    yield srv
    srv.close()


@pytest.mark.parametrize("case", HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_http_bad_input_gets_its_status_and_one_line_and_the_server_keeps_serving(corpus_server, case):
    _id, route, body, headers, status, part = case
    c = corpus_server.client
    method = c.get if route == "/v1/model" else c.post
    kwargs = {"headers": AUTH if headers is None else headers}
    if route != "/v1/model":
        kwargs["content"] = body
    r = method(route, **kwargs)
    assert r.status_code == status, r.text
    msg = r.json()["error"]["message"]
    assert part in msg and "\n" not in msg and TOKEN not in msg, msg
    ok = c.post("/v1/decide", json={"text": "still there?"}, headers=AUTH)
    assert ok.status_code == 200


def test_the_http_corpus_is_large():
    assert len(HTTP_CASES) >= 20 and len({c[0] for c in HTTP_CASES}) == len(HTTP_CASES)
