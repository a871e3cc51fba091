"""prefect.yaml and deployments/serve.py describe the same, valid deployments (no server needed)."""

from __future__ import annotations

import importlib

from deployments.serve import load_deployments, to_runner_deployments

EXPECTED = {
    "retrain-nightly": ("flows/retrain.py:retrain", ["0 2 * * *"], []),
    "recalibrate-nightly": ("flows/calibrate_and_promote.py:calibrate_and_promote", ["30 3 * * *"], []),
    "calibrate-and-promote": ("flows/calibrate_and_promote.py:calibrate_and_promote", [], ["so8t.candidate.published"]),
    "rollback": ("flows/rollback.py:rollback", [], []),
    "pipeline": ("flows/pipeline.py:pipeline", [], []),
}


def test_prefect_yaml_deployments_and_their_parameters_validate():
    specs = {s["name"]: s for s in load_deployments()}
    assert set(specs) == set(EXPECTED)
    for name, (entry, crons, events) in EXPECTED.items():
        s = specs[name]
        assert s["entrypoint"] == entry and s["work_pool"]["name"] == "so8t-process"
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
