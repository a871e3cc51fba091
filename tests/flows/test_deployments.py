"""prefect.yaml and deployments/serve.py describe the same, valid deployments (no server needed)."""

from __future__ import annotations

import importlib

from deployments.serve import load_deployments, to_runner_deployments

EXPECTED = {
    "retrain-nightly": ("flows/retrain.py:retrain", ["0 2 * * *"], [], "so8t-gpu"),
    "recalibrate-nightly": ("flows/calibrate_and_promote.py:calibrate_and_promote", ["30 3 * * *"], [], "so8t-cpu"),
    "calibrate-and-promote": ("flows/calibrate_and_promote.py:calibrate_and_promote", [], ["so8t.candidate.published"],
                              "so8t-cpu"),
    "rollback": ("flows/rollback.py:rollback", [], [], "so8t-cpu"),
    "pipeline": ("flows/pipeline.py:pipeline", [], [], "so8t-gpu"),
}


def test_prefect_yaml_deployments_and_their_parameters_validate():
    specs = {s["name"]: s for s in load_deployments()}
    assert set(specs) == set(EXPECTED)
    for name, (entry, crons, events, pool) in EXPECTED.items():
        s = specs[name]
        assert s["entrypoint"] == entry and s["work_pool"]["name"] == pool
        assert [c["cron"] for c in s.get("schedules") or []] == crons
        assert [e for t in s.get("triggers") or [] for e in t["expect"]] == events
        file, func = entry.split(":")
        fl = getattr(importlib.import_module(file[:-3].replace("/", ".")), func)
        model = fl.fn.__annotations__["params"]
        model = getattr(importlib.import_module(fl.fn.__module__), model) if isinstance(model, str) else model
        model.model_validate((s.get("parameters") or {}).get("params", {}))  # the UI's defaults are valid


def test_serve_builds_the_same_deployments():
    deps = {d.name: d for d in to_runner_deployments(load_deployments())}
    assert set(deps) == set(EXPECTED)
    assert [s.schedule.cron for s in deps["retrain-nightly"].schedules] == ["0 2 * * *"]
    trig = deps["calibrate-and-promote"].triggers[0]
    assert trig.expect == {"so8t.candidate.published"}
    assert trig.parameters == {"params": {"version": "{{ event.payload.version }}", "model": {"name": "{{ event.payload.model }}"}}}
    assert deps["recalibrate-nightly"].parameters == {"params": {"version": "production"}}


def test_nightly_retraining_uses_the_demo_recipe():
    """The scheduled retrain trains what `make demo` measured to pass the gate, not an older recipe."""
    from release.demo import RECIPE_COMMON, RECIPES

    train = {s["name"]: s for s in load_deployments()}["retrain-nightly"]["parameters"]["params"]["train"]
    want = {**RECIPE_COMMON, **RECIPES["demo"]}
    assert {k: train[k] for k in want} == want


def test_training_runs_on_the_gpu_pool_and_calibration_never_sees_cuda():
    specs = {s["name"]: s for s in load_deployments()}
    cpu_env = specs["calibrate-and-promote"]["work_pool"]["job_variables"]["env"]
    assert cpu_env["CUDA_VISIBLE_DEVICES"] == ""
    assert "CUDA_VISIBLE_DEVICES" not in specs["retrain-nightly"]["work_pool"]["job_variables"]["env"]


def test_workers_clone_the_deployed_commit():
    """The build step records repository and commit; the pull step clones exactly those (no shared checkout)."""
    import yaml

    from deployments.serve import REPO

    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (build,) = doc["build"]
    assert build == {"deployments.source.git_source": {"id": "source"}}
    (pull,) = doc["pull"]
    assert pull["prefect.deployments.steps.git_clone"] == {
        "id": "clone", "repository": "{{ source.repository }}", "commit_sha": "{{ source.commit }}"}
