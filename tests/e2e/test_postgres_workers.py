"""Prefect on PostgreSQL with two workers that share nothing but the server (deployments/stack.py).

One scenario (module fixture), on a real stack: PostgreSQL (own cluster, 127.0.0.1), ``prefect server
start`` on it, the so8t-gpu and so8t-cpu process pools, the zombie-detection automation, ``prefect
deploy --all`` of prefect.yaml (a copy whose parameters fit a tiny model and whose schedules are
paused), two workers each in its own empty directory with its own registry, work directory, Prefect
home and Hugging Face cache. The code reaches the workers only through the git-clone pull step (a
snapshot of this working tree committed into a bare repository); versions only through the Hub
stand-in (an HTTP server in this process); coordination only through the server.

1. ``so8t-retrain`` runs on the GPU worker (tiny Llama, 4 steps): candidate v1 in its registry,
   mirrored to the Hub, ``so8t.candidate.published`` emitted;
2. the event triggers ``so8t-calibrate-and-promote`` on the CPU worker: it pulls v1 from the Hub,
   calibrates, publishes v2, promotes it (production: none -> v2);
3. a second calibrate-and-promote of v1 (other validation data) on the CPU worker: the worker and its
   flow run are SIGKILLed right after the calibration's cache record is written; the zombie
   automation marks the run Crashed (missed heartbeats); production is still v2;
4. the CPU worker restarts (same directory) and the run is repeated: it completes, its calibration
   is a cache hit (task run state Cached), v3 becomes production;
5. ``so8t-rollback`` restores v2;
6. the server's flow runs and the registry's history agree (which run promoted or rolled back what).

Skipped, with one line, only when PostgreSQL cannot be installed or started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.source import REPO, snapshot_worktree
from deployments.stack import (POOLS, StackError, api_call, create_stack, ensure_pools, ensure_zombie_automation,
                               kill_tree)
from tests.integration.hub_standin import HubStandin

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

NAME = "tiny-pg"
HUB_REPO = "so8t/tiny-pg"
TOKEN = "hf_pgSECRETtoken0123456789abcdef"
ZOMBIE_AFTER_S = 60
VAL_A, VAL_B = "data/safety_val.jsonl", "data/ab_eval_safety.jsonl"  # paths inside the worker's clone
HELDOUT = "data/ab_eval_safety.jsonl"
# the killed run's held-out evaluation (829 records, ~5 s here) keeps it busy between the calibration's cache
# record and the promotion, so the kill lands in between
HELDOUT_LONG = "data/decision_test.jsonl"
LOOSE_GATE = {"ece_max": 1.0, "far_max": 1.0, "macro_f1_min": 0.0}
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def promotion_params(version: str | None, val_data: str, heldout: str = HELDOUT) -> dict[str, Any]:
    p: dict[str, Any] = {"model": {"name": NAME}, "calibration": {"val_data": val_data},
                         "evaluation": {"data": heldout}, "gate": LOOSE_GATE}
    if version is not None:
        p["version"] = version
    return {"params": p}


def test_prefect_file(src: Path, dst: Path) -> Path:
    """prefect.yaml with tiny-model parameters on the event trigger and every schedule paused."""
    doc = yaml.safe_load(src.read_text())
    for d in doc["deployments"]:
        for s in d.get("schedules") or []:
            s["active"] = False  # a nightly run must not land on the workers during the test
        for t in d.get("triggers") or []:
            extra = promotion_params(None, VAL_A)["params"]
            t["parameters"]["params"] = {**extra, **t["parameters"]["params"]}
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dst


test_prefect_file.__test__ = False  # a helper, not a test


def deployment_id(api: str, name: str) -> str:
    return api_call(api, f"/deployments/name/{name}")["id"]


def run_deployment(api: str, name: str, parameters: dict[str, Any]) -> str:
    return api_call(api, f"/deployments/{deployment_id(api, name)}/create_flow_run", {"parameters": parameters})["id"]


def wait_final(api: str, run_id: str, timeout_s: float, logs: list[Path]) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        run = api_call(api, f"/flow_runs/{run_id}")
        if run["state_type"] in FINAL:
            return run
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-4000:]}" for p in logs if p.exists())
            raise AssertionError(f"flow run {run['name']} still {run['state_type']} after {timeout_s:.0f} s\n{tails}")
        time.sleep(1)


def task_runs(api: str, run_id: str, timeout_s: float = 60) -> list[dict[str, Any]]:
    """The run's task runs once the server recorded them all in a final state (the recorder is asynchronous)."""
    deadline, last = time.monotonic() + timeout_s, None
    while True:
        runs = api_call(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}, "limit": 200})
        snap = sorted((r["id"], r["state_type"], r["state_name"]) for r in runs)
        if (runs and all(r["state_type"] in FINAL for r in runs) and snap == last) or time.monotonic() > deadline:
            return runs
        last = snap
        time.sleep(1)


def triggered_run(api: str, deployment: str, version: str, timeout_s: float) -> dict[str, Any]:
    dep = deployment_id(api, deployment)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for r in api_call(api, "/flow_runs/filter", {"deployments": {"id": {"any_": [dep]}}}):
            if r["parameters"].get("params", {}).get("version") == version:
                return r
        time.sleep(1)
    raise AssertionError(f"no {deployment} run for {version} was triggered by so8t.candidate.published")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with HubStandin(lfs_threshold=1 << 20) as h:
        yield h


@pytest.fixture(scope="module")
def stack(tmp_path_factory, hub):
    d = tmp_path_factory.mktemp("pg_stack")
    try:
        st = create_stack(d)
        st.start_database()
    except StackError as e:
        pytest.skip(f"PostgreSQL cannot be installed or started here: {e}")
    try:
        st.start_server(timeout_s=420, env={
            # task-run states reach the API within ~1 s (flows/prefect_defaults.py measured these)
            "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "20",
            "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "20",
            "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1"})
        ensure_pools(st.api)
        ensure_zombie_automation(st.api, ZOMBIE_AFTER_S)
        commit = snapshot_worktree(d / "code.git")
        st.deploy(test_prefect_file(REPO / "prefect.yaml", d / "prefect.yaml"),
                  source={"repository": (d / "code.git").as_uri(), "commit": commit})
        hub_env = {"SO8T_HF_REPO": HUB_REPO, "SO8T_HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN,
                   "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
        for kind in ("gpu", "cpu"):
            st.start_worker(kind, POOLS[kind], limit=1, env=hub_env, query_s=2)
        yield st
    finally:
        st.stop(purge=False)
        shutil.rmtree(st.postgres.dir, ignore_errors=True)  # the cluster may live outside tmp (root: /tmp/so8t-postgres-*)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pg_data")
    rows = [{"instruction": f"add {i} and {i + 1}", "output": f"{2 * i + 1}"} for i in range(12)]
    rows += [{"instruction": f"repeat the word gate {i}", "output": "gate " * (i % 3 + 1)} for i in range(4)]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "train.jsonl"


@pytest.fixture(scope="module")
def scenario(stack, hub, tiny_llama, train_file):
    from release.params import ConvertSettings, ModelRef, RetrainParams, TrainSettings
    from registry import Registry

    api, logs = stack.api, lambda kind: [stack.logs / f"worker-{kind}.log"]
    gpu_dir, cpu_dir = stack.worker_dir("gpu"), stack.worker_dir("cpu")
    out: dict[str, Any] = {"commit": stack.source["commit"]}

    # 1. retrain on the GPU worker (the worker's registry and work dir: registry_root/work_dir left unset)
    retrain = RetrainParams(
        model=ModelRef(name=NAME),
        train=TrainSettings(base_model=str(tiny_llama), dataset=str(train_file), batch_size=2,
                            gradient_accumulation_steps=1, max_steps=4, save_steps=2, max_length=64, lora_r=4,
                            lora_alpha=8, learning_rate=1e-3),
        convert=ConvertSettings(quants=("Q8_0",), fidelity=False))
    params = {"params": retrain.model_dump(mode="json", exclude={"work_dir"})}
    out["retrain"] = wait_final(api, run_deployment(api, "so8t-retrain/retrain-nightly", params), 900, logs("gpu"))
    assert out["retrain"]["state_type"] == "COMPLETED", (stack.logs / "worker-gpu.log").read_text()[-6000:]

    # 2. the event's calibrate-and-promote on the CPU worker
    first = triggered_run(api, "so8t-calibrate-and-promote/calibrate-and-promote", "v1", 120)
    out["triggered"] = wait_final(api, first["id"], 900, logs("cpu"))
    assert out["triggered"]["state_type"] == "COMPLETED", \
        f"the event's calibrate-and-promote failed on the CPU worker: {out['triggered']['state']['message']}"
    out["after_trigger"] = dict(Registry(cpu_dir / "registry").state(NAME).aliases)

    # 3. a second calibration of v1, killed with its worker once the calibration's cache record exists
    records = cpu_dir / "work" / "calibration" / NAME / "v1" / ".prefect-cache"
    before = set(records.glob("*")) if records.exists() else set()
    killed_id = run_deployment(api, "so8t-calibrate-and-promote/calibrate-and-promote", promotion_params("v1", VAL_B, HELDOUT_LONG))
    worker = next(w for w in stack.workers if w.name == "cpu")
    deadline, polls = time.monotonic() + 900, 0
    while not (set(records.glob("*")) - before):
        polls += 1
        if polls % 40 == 0:  # the API every ~2 s, the directory every 50 ms
            run = api_call(api, f"/flow_runs/{killed_id}")
            assert run["state_type"] not in FINAL, f"the run ended ({run['state_name']}) before its calibration was cached"
        assert time.monotonic() < deadline, "no calibration cache record appeared"
        time.sleep(0.05)
    out["killed_groups"] = kill_tree(worker.pid, signal.SIGKILL)
    out["killed_at"] = time.monotonic()
    out["killed"] = wait_final(api, killed_id, ZOMBIE_AFTER_S + 180, logs("cpu"))
    out["crash_detected_s"] = time.monotonic() - out["killed_at"]
    out["after_kill"] = dict(Registry(cpu_dir / "registry").state(NAME).aliases)

    # 4. the CPU worker comes back (same directory, registry, cache); the run is repeated
    stack.start_worker("cpu", POOLS["cpu"], limit=1, env={"SO8T_HF_REPO": HUB_REPO, "SO8T_HF_ENDPOINT": hub.url,
                                                         "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1"}, query_s=2)
    rerun_id = run_deployment(api, "so8t-calibrate-and-promote/calibrate-and-promote", promotion_params("v1", VAL_B, HELDOUT_LONG))
    out["rerun"] = wait_final(api, rerun_id, 900, logs("cpu"))
    out["rerun_tasks"] = task_runs(api, rerun_id)
    out["after_rerun"] = dict(Registry(cpu_dir / "registry").state(NAME).aliases)

    # 5. rollback deployment
    rb_id = run_deployment(api, "so8t-rollback/rollback", {"params": {"model": {"name": NAME}, "reason": "e2e"}})
    out["rollback"] = wait_final(api, rb_id, 600, logs("cpu"))
    out["after_rollback"] = dict(Registry(cpu_dir / "registry").state(NAME).aliases)
    out["history"] = Registry(cpu_dir / "registry").history(NAME)
    out["gpu_registry"] = Registry(gpu_dir / "registry")
    out["cpu_registry"] = Registry(cpu_dir / "registry")
    return out


def test_the_stack_runs_on_postgresql_with_workers_in_their_own_directories(stack, scenario):
    pg = stack.postgres
    assert stack.api.startswith("http://127.0.0.1:")
    assert pg.url.startswith("postgresql+asyncpg://prefect:") and "@127.0.0.1:" in pg.url
    # the server's data is in PostgreSQL: the flow runs are rows there
    assert int(pg.sql("SELECT count(*) FROM flow_run", database="prefect")) >= 5
    for kind, pool in POOLS.items():
        w = next(x for x in stack.workers if x.name == kind)
        assert w.extra["pool"] == pool and Path(w.cwd) == stack.worker_dir(kind)
        env = dict(line.split("=", 1) for line in Path(f"/proc/{w.pid}/environ").read_text().split("\0") if "=" in line) \
            if Path(f"/proc/{w.pid}/environ").exists() else {}
        assert "PYTHONPATH" not in env
        assert not (stack.worker_dir(kind) / "flows").exists()  # no checkout in the worker's directory
    gpu_dep = api_call(stack.api, "/deployments/name/so8t-retrain/retrain-nightly")
    cpu_dep = api_call(stack.api, "/deployments/name/so8t-calibrate-and-promote/calibrate-and-promote")
    assert (gpu_dep["work_pool_name"], cpu_dep["work_pool_name"]) == ("so8t-gpu", "so8t-cpu")
    (step,) = cpu_dep["pull_steps"]
    assert step["prefect.deployments.steps.git_clone"]["commit_sha"] == scenario["commit"]


def test_retrain_on_the_gpu_worker_and_the_event_promotes_on_the_cpu_worker(scenario, hub):
    assert scenario["retrain"]["state_type"] == "COMPLETED"
    gpu, cpu = scenario["gpu_registry"], scenario["cpu_registry"]
    cand = gpu.manifest(NAME, "v1")
    assert cand.lineage.code_revision == scenario["commit"]  # the worker ran the cloned commit
    assert [v.version for v in gpu.list_versions(NAME)] == ["v1"]
    assert "v1" in dict(hub.repos[HUB_REPO].tags)  # mirrored before the event
    assert scenario["triggered"]["state_type"] == "COMPLETED", scenario["triggered"]["state"]["message"]
    assert cpu.manifest(NAME, "v1").files == cand.files  # pulled from the Hub, identical
    assert scenario["after_trigger"]["production"] == "v2"
    assert cpu.manifest(NAME, "v2").lineage.parents == ("v1",)


def test_killing_the_cpu_worker_crashes_the_run_and_a_rerun_reuses_its_cache(scenario):
    killed = scenario["killed"]
    assert killed["state_type"] == "CRASHED", killed["state"]
    assert "heartbeat" in (killed["state"]["message"] or "")
    assert len(scenario["killed_groups"]) >= 2  # the worker's group and its flow run's own session
    assert scenario["after_kill"]["production"] == "v2"  # unchanged
    rerun = scenario["rerun"]
    assert rerun["state_type"] == "COMPLETED", rerun["state"]["message"]
    states = sorted((t["name"], t["state_name"]) for t in scenario["rerun_tasks"])
    cal = [t for t in scenario["rerun_tasks"] if t["name"].startswith("calibrate")]
    assert cal and all(t["state_name"] == "Cached" for t in cal), states
    assert scenario["after_rerun"]["production"] == "v3"


def test_rollback_restores_and_the_server_and_the_registry_history_agree(stack, scenario):
    assert scenario["rollback"]["state_type"] == "COMPLETED", scenario["rollback"]["state"]["message"]
    assert scenario["after_rollback"]["production"] == "v2"
    changes = [(h.action, h.to_version, h.flow_run_id) for h in scenario["history"] if h.alias == "production"]
    assert changes == [("promote", "v2", scenario["triggered"]["id"]), ("promote", "v3", scenario["rerun"]["id"]),
                       ("rollback", "v2", scenario["rollback"]["id"])]
    for _, _, run_id in changes:
        run = api_call(stack.api, f"/flow_runs/{run_id}")
        assert run["state_type"] == "COMPLETED" and run["deployment_id"]
    assert scenario["killed"]["id"] not in {h.flow_run_id for h in scenario["history"]}
