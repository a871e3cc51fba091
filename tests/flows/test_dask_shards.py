"""The flows' Dask path: calibrate_task with dask_workers=2 scores in shards, each a Prefect task run on
prefect-dask's DaskTaskRunner (a LocalCluster of 2 processes), and writes the sequential run's scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.fixtures.required import require_module, smollm2_gguf

require_module("llama_cpp")
require_module("prefect_dask")


def test_calibrate_task_scores_shards_as_task_runs_on_dask(prefect_api, flow_data, tmp_path, monkeypatch):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from so8t.calibrate.stage import CalibrateCommandConfig, load_calibration_scores
    from so8t.calibrate.scoring import score_file
    from tasks.calibration import calibrate_task

    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))
    gguf = smollm2_gguf()
    data = tmp_path / "val.jsonl"
    data.write_text("\n".join(Path(flow_data["val"]).read_text(encoding="utf-8").splitlines()[:10]) + "\n",
                    encoding="utf-8")
    cfg = CalibrateCommandConfig(model=str(gguf), val_data=str(data), output_dir=str(tmp_path / "out"), n_ctx=1024,
                                 no_cache=True, dask_workers=2)

    @flow(name="dask-shards-test")
    def calibrate_on_dask(cfg):  # no annotation: the type is imported inside the test
        return calibrate_task(cfg)

    state = calibrate_on_dask(cfg, return_state=True)
    assert state.is_completed(), state
    z = load_calibration_scores(tmp_path / "out")["z"]
    seq = score_file(gguf, data, n_ctx=1024, n_threads=1, use_cache=False, progress=False)
    assert np.array_equal(z, seq.z)  # bit for bit

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    shard_runs = sorted((r.name, r.state.type.value) for r in runs if r.name.startswith("scoring shard"))
    assert shard_runs == [(f"scoring shard 1/2 (records 1-5 of {gguf.name})", "COMPLETED"),
                          (f"scoring shard 2/2 (records 6-10 of {gguf.name})", "COMPLETED")], shard_runs
    doc = json.loads((tmp_path / "out" / "calibration_results.json").read_text())
    assert doc["scoring"]["cache_key"] == seq.cache_key
