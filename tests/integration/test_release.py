"""The release package runs the whole pipeline without Prefect: the recipes of :mod:`release.recipes` with
the plain :class:`release.stages.Stages`, in a process where importing Prefect is refused.

One process (a tiny Llama, real training, bake, GGUF, calibration, registry): the pipeline promotes its
candidate (smoke test passed, production set, lineage recorded); a second candidate under a gate it cannot
pass is rejected with production unchanged (GateFailed); a rollback recipe moves production back; and
Prefect was never imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: The start of a script run in a fresh process with Prefect refused: the import blocker, then (after the script's own
#: ``out = Path(sys.argv[1])`` line) :data:`TINY_INPUTS`. Shared with tests/integration/test_registry_pull.py.
NO_PREFECT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    class NoPrefect:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "prefect":
                raise ImportError(f"blocked import of {name}")
            return None

    sys.meta_path.insert(0, NoPrefect())
    """
)

#: A tiny model, 12 training records and 60 validation records under ``out``.
TINY_INPUTS = textwrap.dedent(
    """
    from tests.fixtures.tiny_models import build_tiny_llama, build_tokenizer_model

    model = build_tiny_llama(out / "llama", build_tokenizer_model(out / "sp"))
    train = out / "train.jsonl"
    train.write_text("".join(json.dumps({"instruction": f"add {i} and {i + 1}", "output": f"{2 * i + 1}"}) + "\\n"
                             for i in range(12)))
    val = out / "val.jsonl"
    val.write_text("\\n".join((Path("data") / "safety_val.jsonl").read_text(encoding="utf-8").splitlines()[:60]) + "\\n",
                   encoding="utf-8")
    """
)

SCRIPT = NO_PREFECT + "out = Path(sys.argv[1])\n" + TINY_INPUTS + textwrap.dedent(
    """

    from registry import Registry
    from release.params import (CalibrateAndPromoteParams, CalibrationSettings, ConvertSettings, ModelRef,
                                PipelineParams, RetrainParams, RollbackParams, TrainSettings)
    from release.evaluation import EvaluationSettings
    from release.recipes import GateFailed, build_candidate, calibrate_gate_promote, rollback, run_pipeline
    from release.stages import Stages
    from so8t.calibrate.promotion_gate import GateConfig

    ref = ModelRef(name="rel-tiny", registry_root=str(out / "registry"))
    settings = dict(base_model=str(model), dataset=str(train), batch_size=2, gradient_accumulation_steps=1, max_steps=4,
                    save_steps=2, max_length=64, lora_r=4, lora_alpha=8, learning_rate=1e-3)
    open_gate = GateConfig(ece_max=1.0, far_max=1.0, macro_f1_min=0.0)
    p = PipelineParams(model=ref, work_dir=str(out / "work"), train=TrainSettings(**settings),
                       convert=ConvertSettings(quants=("Q8_0",)), calibration=CalibrationSettings(val_data=str(val)),
                       gate=open_gate, evaluation=EvaluationSettings(data=None))
    first = run_pipeline(p, Stages())
    reg = Registry(ref.registry_root)
    report = {"first": first.model_dump(mode="json"), "production_1": reg.state("rel-tiny").aliases.get("production"),
              "lineage": reg.manifest("rel-tiny", first.promotion.version).lineage.parents}

    cand = build_candidate(RetrainParams(model=ref, work_dir=str(out / "work2"),
                                         train=TrainSettings(**{**settings, "max_steps": 2, "save_steps": 1}),
                                         convert=ConvertSettings(quants=("Q8_0",))), Stages())
    strict = CalibrateAndPromoteParams(model=ref, version=cand.version, work_dir=str(out / "work2"),
                                       calibration=CalibrationSettings(val_data=str(val)),
                                       gate=GateConfig(ece_max=0.0, far_max=0.0, macro_f1_min=1.0),
                                       evaluation=EvaluationSettings(data=None))
    try:
        calibrate_gate_promote(strict, Stages())
        report["gate_failed"] = None
    except GateFailed as e:
        report["gate_failed"] = str(e)
    report["candidate"] = cand.version
    report["states"] = {v.version: v.state.value for v in reg.list_versions("rel-tiny")}
    report["production_2"] = reg.state("rel-tiny").aliases.get("production")

    reg.promote("rel-tiny", "v1", reason="test: something to roll back")
    entry = rollback(RollbackParams(model=ref, reason="test rollback"), Stages())
    report["rolled_back_to"] = entry.to_version if entry else None
    report["production_3"] = reg.state("rel-tiny").aliases.get("production")
    report["prefect_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] == "prefect")
    print("REPORT " + json.dumps(report))
    """
)


@pytest.mark.slow
def test_the_whole_pipeline_runs_through_the_release_package_without_prefect(tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                       timeout=1500, env={**__import__("os").environ, "SO8T_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-4000:]
    report = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("REPORT "))[len("REPORT "):])
    first = report["first"]
    assert first["promotion"]["action"] == "promoted"
    released = first["promotion"]["version"]
    assert report["production_1"] == released and report["lineage"] == [first["candidate"]["version"]]
    assert report["gate_failed"] and "failed the promotion gate" in report["gate_failed"]
    assert report["states"][report["candidate"]] == "rejected"
    calibrated_reject = max(report["states"], key=lambda v: int(v[1:]))  # the calibrated copy of the candidate
    assert report["states"][calibrated_reject] == "rejected"
    assert report["production_2"] == released  # the failed gate left production alone
    assert report["rolled_back_to"] == released and report["production_3"] == released
    assert report["prefect_loaded"] == []


def test_so8t_release_command_runs_a_recipe_and_refuses_bad_params_in_one_line(tmp_path, capsys):
    """`so8t release rollback` (the console script's release.cli) moves production back; bad parameters are one
    line and exit 2; `so8t` commands other than release pass through to so8t.cli unchanged."""
    from registry import Registry
    from release.cli import main

    root = tmp_path / "reg"
    reg = Registry(root)
    for payload in (b"one", b"two"):
        reg.publish("rel-cli", {"model.gguf": payload})
    reg.promote("rel-cli", "v1")
    reg.promote("rel-cli", "v2")
    assert main(["release", "rollback", "--name", "rel-cli", "--registry_root", str(root), "--reason", "cli test"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["from_version"], out["to_version"], out["reason"]) == ("v2", "v1", "cli test")
    assert reg.state("rel-cli").aliases["production"] == "v1"

    bad = tmp_path / "params.json"
    for text, msg in (("{not json", "params.json:1: malformed JSON at column 2"), ('{"work_dir": 3}', "field 'work_dir'"),
                      ('{"model": {"nme": "x"}}', "field 'model.nme'"), ("[1]", "expected a JSON object")):
        bad.write_text(text)
        assert main(["release", "retrain", "--params", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("so8t release: error:") and msg in err and "\n" not in err, err
    assert main(["base", "list"]) == 0 and "smollm2" in capsys.readouterr().out  # the library's commands pass through
    with pytest.raises(SystemExit) as e:
        main(["release", "--help"])
    shown = capsys.readouterr().out
    assert e.value.code == 0 and all(r in shown for r in ("pipeline", "retrain", "calibrate", "rollback"))
