"""End to end with a real Prefect server, `prefect deploy --all`, a process worker and the UI.

1. ``prefect server start --host 127.0.0.1 --port <free>`` in a temporary PREFECT_HOME;
2. ``prefect work-pool create so8t-gpu|so8t-cpu --type process`` and ``prefect deploy --all`` (prefect.yaml;
   the workers clone a snapshot of this working tree: deployments/source.py);
3. ``prefect worker start --pool so8t-cpu`` (calibrate-and-promote runs there);
4. the cron schedules (retrain-nightly, recalibrate-nightly) and the event trigger of
   calibrate-and-promote are registered (read back through the API);
5. ``prefect deployment run so8t-calibrate-and-promote/calibrate-and-promote`` on a registry with a
   tiny-model candidate, awaited with --watch: Completed, production promoted;
6. headless Chromium opens the flow run's page: the state and the calibration-report artifact are
   shown (screenshots under logs/e2e/), and the artifact page renders the reliability diagram;
7. emitting ``so8t.candidate.published`` creates a calibrate-and-promote run with the event's version.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from deployments.source import snapshot_worktree
from tests.e2e.browser import Browser, find_chromium

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "logs" / "e2e"
NAME = "tiny-e2e"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(url: str, path: str, body: dict | None = None) -> object:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"content-type": "application/json"}, method="POST" if body is not None else "GET")
    return json.loads(urllib.request.urlopen(req, timeout=30).read())


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def candidate_registry(tiny_llama, tmp_path_factory) -> Path:
    """A registry whose v1 candidate serves the tiny Llama as a Q8_0 GGUF (with its Modelfile)."""
    from registry import Registry
    from so8t.export.gguf import convert_to_gguf
    from so8t.serving.inference import write_modelfile

    d = tmp_path_factory.mktemp("e2e_candidate")
    conv = convert_to_gguf(tiny_llama, d / "gguf", ("Q8_0",), name=NAME, fidelity=False)
    gguf = conv.path("Q8_0")
    write_modelfile(gguf, d / "gguf" / "Modelfile")
    Registry(d / "registry").publish(
        NAME, {f"gguf/{gguf.name}": gguf, "gguf/Modelfile": d / "gguf" / "Modelfile", "reports/gguf_report.json": conv.report_path},
        parameters={"main_gguf": f"gguf/{gguf.name}"}, description="tiny e2e candidate")
    return d / "registry"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Prefect server on 127.0.0.1 (free port), deployments from prefect.yaml, one process worker."""
    d = tmp_path_factory.mktemp("prefect_server")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(d / "home"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "2",
           "PREFECT_LOGGING_EXTRA_LOGGERS": "so8t,registry",
           "SO8T_REGISTRY": str(d / "default-registry")}  # runs started by events use the default root
    prefect = [sys.executable, "-m", "prefect"]
    procs = [_start([*prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, d / "server.log")]
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if urllib.request.urlopen(api + "/health", timeout=5).status == 200:
                    break
            except OSError:
                pass
            assert procs[0].poll() is None, (d / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "prefect server did not become healthy in 240 s"
            time.sleep(1)
        for pool in ("so8t-gpu", "so8t-cpu"):
            subprocess.run([*prefect, "work-pool", "create", pool, "--type", "process"], cwd=REPO, env=env,
                           check=True, capture_output=True, timeout=120)
        code = snapshot_worktree(d / "code.git")  # the worker clones this working tree, not the last commit
        deploy_env = {**env, "SO8T_GIT_REPOSITORY": (d / "code.git").as_uri(), "SO8T_GIT_COMMIT": code}
        out = subprocess.run([*prefect, "--no-prompt", "deploy", "--all"], cwd=REPO, env=deploy_env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        procs.append(_start([*prefect, "worker", "start", "--pool", "so8t-cpu", "--type", "process"], env, d / "worker.log"))
        yield {"api": api, "ui": f"http://127.0.0.1:{port}", "env": env, "dir": d}
    finally:
        for p in reversed(procs):
            _stop(p)


def test_schedules_and_trigger_are_registered(server):
    retrain = _api(server["api"], "/deployments/name/so8t-retrain/retrain-nightly")
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"], s["active"]) for s in retrain["schedules"]] == [("0 2 * * *", "UTC", True)]
    assert retrain["work_pool_name"] == "so8t-gpu"
    train = retrain["parameters"]["params"]["train"]
    assert train["max_steps"] == 100 and train["label_loss"] == "label_token" and train["lora_layers"] == "top:10"
    recal = _api(server["api"], "/deployments/name/so8t-calibrate-and-promote/recalibrate-nightly")
    assert [s["schedule"]["cron"] for s in recal["schedules"]] == ["30 3 * * *"]
    assert recal["parameters"] == {"params": {"version": "production"}}
    cap = _api(server["api"], "/deployments/name/so8t-calibrate-and-promote/calibrate-and-promote")
    autos = _api(server["api"], f"/automations/related-to/prefect.deployment.{cap['id']}")
    assert [a["trigger"]["expect"] for a in autos] == [["so8t.candidate.published"]]
    schema = cap["parameter_openapi_schema"]
    assert "params" in schema["properties"], "flow parameters are a pydantic model: the UI renders a typed form"
    for name, pool in (("rollback", "so8t-cpu"), ("pipeline", "so8t-gpu")):
        assert _api(server["api"], f"/deployments/name/so8t-{name}/{name}")["work_pool_name"] == pool


def test_deployment_run_completes_and_the_ui_shows_state_and_calibration(server, candidate_registry, tmp_path):
    from registry import Registry

    if find_chromium() is None:
        pytest.fail("chromium is missing: `make setup` installs Debian's chromium (apt-get install -y chromium)")
    val = REPO / "data" / "safety_val.jsonl"
    params = {"params": {"model": {"name": NAME, "registry_root": str(candidate_registry)}, "version": "v1",
                         "work_dir": str(tmp_path / "work"), "calibration": {"val_data": str(val)},
                         "evaluation": {"data": str(REPO / "data" / "ab_eval_safety.jsonl")},
                         "gate": {"ece_max": 1.0, "far_max": 1.0, "macro_f1_min": 0.0}}}
    out = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run",
                          "so8t-calibrate-and-promote/calibrate-and-promote", "--params", json.dumps(params),
                          "--watch", "--watch-timeout", "420"],
                         cwd=REPO, env=server["env"], capture_output=True, text=True, timeout=480)
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out.stdout).group(1)
    run = _api(server["api"], f"/flow_runs/{flow_run_id}")
    assert run["state_type"] == "COMPLETED", out.stdout[-3000:] + (server["dir"] / "worker.log").read_text()[-3000:]
    assert Registry(candidate_registry).state(NAME).aliases["production"] == "v2"

    browser = Browser(tmp_path / "chromium-profile")
    try:
        browser.goto(f"{server['ui']}/runs/flow-run/{flow_run_id}")
        browser.wait_for_text(run["name"], "Completed", "so8t-calibrate-and-promote", "Artifacts", timeout_s=90)
        browser.js("document.getElementById('artifacts').click()")
        page = browser.wait_for_text("calibration-report", "gate-verdict", "heldout-evaluation", timeout_s=60)
        assert "PASS" in page
        shot = browser.screenshot(SHOTS / "flow-run-artifacts.png")
        assert shot.stat().st_size > 10_000

        arts = _api(server["api"], "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]},
                                                                       "key": {"any_": ["calibration-report"]}}})
        browser.goto(f"{server['ui']}/artifacts/artifact/{arts[0]['id']}")
        browser.wait_for_text("Reliability diagram", "Verdict: PASS", timeout_s=60)
        widths = browser.wait_for("Array.from(document.images).filter(i => i.src.startsWith('data:image/png') "
                                  "&& i.complete && i.naturalWidth > 0).map(i => i.naturalWidth)", 30, "the diagram")
        assert widths and widths[0] >= 300
        browser.screenshot(SHOTS / "calibration-artifact.png")
    finally:
        browser.close()


def test_candidate_published_event_triggers_calibrate_and_promote(server):
    env = server["env"]
    code = ("from prefect.events import emit_event; from prefect.events.worker import EventsWorker; "
            f"emit_event('so8t.candidate.published', resource={{'prefect.resource.id': 'so8t.model.{NAME}'}}, "
            f"payload={{'model': '{NAME}', 'version': 'v987'}}); EventsWorker.drain_all()")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=120)
    cap = _api(server["api"], "/deployments/name/so8t-calibrate-and-promote/calibrate-and-promote")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        runs = _api(server["api"], "/flow_runs/filter", {"deployments": {"id": {"any_": [cap["id"]]}}})
        triggered = [r for r in runs if r["parameters"].get("params", {}).get("version") == "v987"]
        if triggered:
            assert triggered[0]["parameters"]["params"]["model"] == {"name": NAME}
            return
        time.sleep(1)
    raise AssertionError("no calibrate-and-promote run was triggered by so8t.candidate.published")
