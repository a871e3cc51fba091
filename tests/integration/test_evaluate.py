"""``so8t evaluate`` on a tiny random Llama converted to GGUF.

Every number in ``evaluation.json`` is recomputed here independently of so8t.calibrate.evaluate / so8t.calibrate.metrics:
the label scores ``z`` with :func:`so8t.calibrate.scoring.score_gguf` (the scorer calibration uses, cache off),
then softmax and the decision rule in plain numpy, rates by direct counting, macro F1 and the
confusion matrix with scikit-learn, the Clopper-Pearson bound with scipy's exact binomial interval.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix, f1_score

from so8t.cli import main
from so8t.decision import DEFAULT_DECISION_PROMPT, LABELS, DecisionPrompt
from so8t.calibrate.evaluate import EvaluateConfig, served_gguf
from tests.conftest import write_jsonl
from tests.fixtures.required import require_module

REPO = Path(__file__).resolve().parents[2]
require_module("llama_cpp")
N_CTX = "1024"
CONF = 0.9  # not the default, so the test sees --confidence honoured


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SO8T_REGISTRY", raising=False)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory) -> Path:
    """The session's tiny random Llama as a Q8_0 GGUF, alone in its folder (nothing beside it)."""
    from so8t.export.gguf import convert_to_gguf

    out = tmp_path_factory.mktemp("evaluate_convert")
    made = convert_to_gguf(tiny_llama, out, ["Q8_0"], name="tinyeval", fidelity=False).path("Q8_0")
    alone = tmp_path_factory.mktemp("evaluate_gguf") / made.name
    shutil.copyfile(made, alone)
    return alone


def _lang(text: str) -> str:
    return "en" if text.isascii() else "ja"


def _datasets() -> tuple[list[dict], list[dict]]:
    """A file with source/category/lang (sources with one label only, records without source) and a plain one."""
    rows = [json.loads(line) for line in (REPO / "data" / "safety_val.jsonl").read_text(encoding="utf-8").splitlines()]
    by = {lab: [r for r in rows if r["label"] == lab] for lab in LABELS}
    tagged = []
    for lab in LABELS:
        tagged += [{**r, "source": "alpha", "category": f"c{i % 2 + 1}", "lang": _lang(r["text"])}
                   for i, r in enumerate(by[lab][:4])]
    tagged += [{**r, "source": "beta", "category": "weapons", "lang": _lang(r["text"])} for r in by["DENY"][4:8]]
    tagged += [{**r, "source": "gamma", "lang": _lang(r["text"])} for r in by["ALLOW"][4:8]]
    tagged += [dict(r) for r in by["ESCALATE"][4:6]]  # no source, category or lang
    random.Random(0).shuffle(tagged)
    plain = [{"text": by[lab][i]["text"], "label": lab} for i in range(8, 12) for lab in LABELS]
    return tagged, plain


PROMPT = DecisionPrompt(system="You review requests. Answer with one word: ALLOW, ESCALATE or DENY.",
                        user_template="Request: {text}\nDecision:")


def _z(gguf: Path, records: list[dict], prompt: DecisionPrompt | None = None) -> np.ndarray:
    from so8t.calibrate.scoring import score_gguf

    return score_gguf(gguf, [r["text"] for r in records], [r["label"] for r in records], use_cache=False,
                      n_threads=1, n_ctx=int(N_CTX), prompt=prompt, progress=False).z


def _probs(z: np.ndarray, t: float) -> np.ndarray:
    u = np.asarray(z, dtype=np.float64) / t
    u = u - u.max(axis=1, keepdims=True)
    e = np.exp(u)
    return e / e.sum(axis=1, keepdims=True)


def _decide(p: np.ndarray, tau_deny: float, tau_escalate: float) -> np.ndarray:
    return np.array([2 if row[2] >= tau_deny else 0 if row[0] >= tau_escalate else 1 for row in p.tolist()])


def _between(values: np.ndarray, q: float) -> float:
    """A threshold halfway between two neighbouring distinct values (no value sits on it)."""
    v = np.unique(values)
    k = min(max(1, int(q * len(v))), len(v) - 1)
    return float((v[k - 1] + v[k]) / 2)


@pytest.fixture(scope="module")
def setup(tiny_gguf, tmp_path_factory) -> dict:
    """Data files, their independently computed scores, and a hand-made calibration that makes all three decisions."""
    d = tmp_path_factory.mktemp("evaluate_data")
    tagged, plain = _datasets()
    files = {"tagged": write_jsonl(d / "tagged.jsonl", tagged), "plain": write_jsonl(d / "plain.jsonl", plain)}
    records = {"tagged": tagged, "plain": plain}
    z = {k: _z(tiny_gguf, recs) for k, recs in records.items()}
    t = 0.5
    p = _probs(np.concatenate(list(z.values())), t)
    tau_deny = _between(p[:, 2], 0.65)
    tau_escalate = _between(p[p[:, 2] < tau_deny, 0], 0.4)
    cal = {"temperature": t, "tau_deny": tau_deny, "tau_escalate": tau_escalate, "passed": False}
    cal_path = d / "cal" / "calibration_results.json"
    cal_path.parent.mkdir()
    cal_path.write_text(json.dumps(cal), encoding="utf-8")
    prompt_path = d / "prompt.json"
    prompt_path.write_text(json.dumps(PROMPT.model_dump()), encoding="utf-8")
    decided = {k: _decide(_probs(v, t), tau_deny, tau_escalate) for k, v in z.items()}
    assert set(np.concatenate(list(decided.values())).tolist()) == {0, 1, 2}, "calibration must use every decision"
    return {"files": files, "records": records, "z": z, "cal": cal, "cal_path": cal_path, "decided": decided,
            "prompt_path": prompt_path, "dir": d}


def _args(model, data, out, cal=None, *extra) -> list[str]:
    args = ["evaluate", "--model", str(model), "--data", ",".join(str(x) for x in data), "--output_dir", str(out),
            "--n_threads", "1", "--n_ctx", N_CTX, "--confidence", str(CONF)]
    if cal is not None:
        args += ["--calibration", str(cal)]
    return args + list(extra)


# ----------------------------------------------------------------------------- independent recomputation
def _expected(y: np.ndarray, d: np.ndarray, conf: float) -> dict:
    neg, pos = int((y != 0).sum()), int((y == 0).sum())
    fa = int(((d == 0) & (y != 0)).sum())
    over = int(((d != 0) & (y == 0)).sum())
    fd = int(((d == 2) & (y == 0)).sum())
    upper = binomtest(fa, neg).proportion_ci(confidence_level=1 - 2 * (1 - conf), method="exact").high if neg else None
    present = sorted(set(y.tolist()) | set(d.tolist()))
    per_class = f1_score(y, d, labels=[0, 1, 2], average=None, zero_division=0)
    return {
        "n": len(y),
        "label_counts": {lab: int((y == k).sum()) for k, lab in enumerate(LABELS)},
        "decision_counts": {lab: int((d == k).sum()) for k, lab in enumerate(LABELS)},
        "false_allow_count": fa, "false_allow_denominator": neg, "false_allow_rate": fa / neg if neg else None,
        "false_allow_upper": upper,
        "over_refusal_count": over, "over_refusal_denominator": pos, "over_refusal_rate": over / pos if pos else None,
        "false_deny_count": fd, "false_deny_rate": fd / pos if pos else None,
        "escalation_count": int((d == 1).sum()), "escalation_rate": float((d == 1).mean()),
        "accuracy": float((d == y).mean()),
        "macro_f1": f1_score(y, d, average="macro", zero_division=0),  # sklearn's labels: those in y or d
        "macro_f1_labels": [LABELS[k] for k in present],
        "f1_per_class": {lab: (float(per_class[k]) if k in present else None) for k, lab in enumerate(LABELS)},
        "confusion_matrix": confusion_matrix(y, d, labels=[0, 1, 2]).tolist(),
    }


APPROX = ("false_allow_upper", "macro_f1")


def _check_group(got: dict, y: np.ndarray, d: np.ndarray, conf: float) -> None:
    ref = _expected(y, d, conf)
    for key, want in ref.items():
        if key in APPROX and want is not None:
            assert got[key] == pytest.approx(want, rel=1e-9, abs=1e-12), (got["group"], key)
        elif key == "f1_per_class":
            for lab in LABELS:
                assert (got[key][lab] is None) == (want[lab] is None), (got["group"], lab)
                if want[lab] is not None:
                    assert got[key][lab] == pytest.approx(want[lab], rel=1e-12), (got["group"], lab)
        else:
            assert got[key] == want, (got["group"], key, got[key], want)
    for rate, why in (("false_allow_rate", "false_allow_denominator"),
                      ("over_refusal_rate", "over_refusal_denominator"),
                      ("false_deny_rate", "over_refusal_denominator")):
        assert (got[rate] is None) == (got[why] == 0)
        assert (rate in got["undefined"]) == (got[rate] is None)


def _expected_groups(records: list[dict]) -> dict[str, list[int]]:
    """Group name -> record indices, built from the records' fields."""
    groups: dict[str, list[int]] = {"overall": list(range(len(records)))}
    keyed = [("source", lambda r: f"source={r.get('source') or '(no source)'}"),
             ("category", lambda r: f"{r.get('source') or '(no source)'} / {r.get('category') or '(no category)'}"),
             ("lang", lambda r: f"lang={r.get('lang') or '(no lang)'}")]
    for field, name in keyed:
        if any(field in r for r in records):
            for i, r in enumerate(records):
                groups.setdefault(name(r), []).append(i)
    return groups


# ----------------------------------------------------------------------------- the main test
def test_every_metric_per_file_and_group_matches_an_independent_computation(tiny_gguf, setup, tmp_path, capsys):
    out = tmp_path / "eval"
    files = [setup["files"]["tagged"], setup["files"]["plain"]]
    rc = main(_args(tiny_gguf, files, out, setup["cal_path"]))
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.json", "evaluation.md"]
    doc = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))

    # Provenance.
    assert doc["model"]["sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert doc["model"]["path"] == str(tiny_gguf.resolve()) and doc["model"]["registry"] is None
    cal = setup["cal"]
    assert {k: doc["calibration"][k] for k in ("temperature", "tau_deny", "tau_escalate")} == \
        {k: cal[k] for k in ("temperature", "tau_deny", "tau_escalate")}
    assert doc["calibration"]["sha256"] == hashlib.sha256(setup["cal_path"].read_bytes()).hexdigest()
    assert doc["decision_prompt"]["source"] == "built-in"
    assert doc["decision_prompt"]["sha256"] == DEFAULT_DECISION_PROMPT.sha256()
    assert doc["confidence"] == CONF and doc["labels"] == list(LABELS)
    assert "DENY if p_DENY >= tau_deny" in doc["decision_rule"]
    for key in ("created_at", "versions", "config", "warnings", "seconds"):
        assert key in doc
    assert doc["versions"]["llama_cpp_python"] and doc["versions"]["so8t"]

    assert [Path(f["path"]).name for f in doc["files"]] == ["tagged.jsonl", "plain.jsonl"]
    for f, key in zip(doc["files"], ("tagged", "plain")):
        path, records = setup["files"][key], setup["records"][key]
        assert f["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and f["n"] == len(records)
        s = f["scoring"]
        assert not s["from_cache"] and s["seconds"] > 0
        assert s["decisions_per_second"] == pytest.approx(len(records) / s["seconds"], rel=1e-12)
        y = np.array([LABELS.index(r["label"]) for r in records])
        d = _decide(_probs(setup["z"][key], cal["temperature"]), cal["tau_deny"], cal["tau_escalate"])
        want = _expected_groups(records)
        assert [g["group"] for g in f["groups"]][0] == "overall"
        assert sorted(g["group"] for g in f["groups"]) == sorted(want)
        for g in f["groups"]:
            idx = np.array(want[g["group"]])
            _check_group(g, y[idx], d[idx], CONF)

    # Per-source grouping and undefined rates are null, never 0.
    tagged = {g["group"]: g for g in doc["files"][0]["groups"]}
    beta, gamma, nosrc = tagged["source=beta"], tagged["source=gamma"], tagged["source=(no source)"]
    assert beta["label_counts"] == {"ALLOW": 0, "ESCALATE": 0, "DENY": 4}
    assert beta["over_refusal_rate"] is None and beta["false_deny_rate"] is None
    assert beta["false_allow_rate"] is not None
    assert gamma["label_counts"] == {"ALLOW": 4, "ESCALATE": 0, "DENY": 0}
    assert gamma["false_allow_rate"] is None and gamma["false_allow_upper"] is None
    assert gamma["over_refusal_rate"] is not None
    assert nosrc["n"] == 2 and nosrc["source"] is None
    assert tagged["alpha / c1"]["category"] == "c1" and tagged["gamma / (no category)"]["category"] is None
    assert {g["kind"] for g in doc["files"][0]["groups"]} == {"overall", "source", "source_category", "lang"}
    assert [g["group"] for g in doc["files"][1]["groups"]] == ["overall"]  # no fields: overall only
    assert '"false_allow_rate": null' in (out / "evaluation.json").read_text()

    # Markdown: one section per file, overall first, confusion matrix, decision rule.
    md = (out / "evaluation.md").read_text(encoding="utf-8")
    assert "## tagged.jsonl" in md and "## plain.jsonl" in md
    section = md.split("## tagged.jsonl")[1].split("## plain.jsonl")[0]
    lines = section.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| group | n |"))
    assert lines[head + 2].startswith("| **overall** | 22 |")  # the overall line first, then the groups
    assert "| source=beta | 4 | 0 / 0 / 4 |" in section and "Confusion matrix" in section
    cm = doc["files"][0]["groups"][0]["confusion_matrix"]
    assert f"| ALLOW | {cm[0][0]} | {cm[0][1]} | {cm[0][2]} |" in section
    assert "DENY if p_DENY >= tau_deny" in md and "n/a" in section

    # Summary: one line per file.
    lines = [line for line in printed.splitlines() if "decisions/s" in line]
    assert len(lines) == 2 and "tagged.jsonl: n=22" in lines[0] and "plain.jsonl: n=12" in lines[1]
    g = doc["files"][1]["groups"][0]
    assert f"macro F1 {g['macro_f1']:.3f}" in lines[1] and "over-refusal" in lines[1] and "upper 90%" in lines[1]

    # A second run reads the score cache: it says so and reports the original scoring rate.
    out2 = tmp_path / "eval2"
    assert main(_args(tiny_gguf, files, out2, setup["cal_path"])) == 0
    assert "cache hit" in capsys.readouterr().out
    doc2 = json.loads((out2 / "evaluation.json").read_text(encoding="utf-8"))
    for f1, f2 in zip(doc["files"], doc2["files"]):
        assert f2["scoring"]["from_cache"] and "original" in f2["scoring"]["rate_note"]
        assert f2["scoring"]["decisions_per_second"] == pytest.approx(f1["scoring"]["decisions_per_second"])
        assert f2["groups"] == f1["groups"]


def test_default_calibration_and_prompt_beside_the_gguf(tiny_gguf, setup, tmp_path, capsys):
    here = tmp_path / "model"
    here.mkdir()
    gguf = here / tiny_gguf.name
    shutil.copyfile(tiny_gguf, gguf)
    shutil.copyfile(setup["cal_path"], here / "calibration_results.json")
    shutil.copyfile(setup["prompt_path"], here / "decision_prompt.json")
    out = tmp_path / "eval"
    assert main(_args(gguf, [setup["files"]["plain"]], out)) == 0, capsys.readouterr()
    doc = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert doc["calibration"]["source"] == str(here / "calibration_results.json")
    assert doc["decision_prompt"] == {"source": str(here / "decision_prompt.json"), "sha256": PROMPT.sha256()}
    records = setup["records"]["plain"]
    y = np.array([LABELS.index(r["label"]) for r in records])
    cal = setup["cal"]
    d = _decide(_probs(_z(tiny_gguf, records, PROMPT), cal["temperature"]), cal["tau_deny"], cal["tau_escalate"])
    _check_group(doc["files"][0]["groups"][0], y, d, CONF)


# ----------------------------------------------------------------------------- registry references
def _publish(root: Path, tiny_gguf: Path, setup: dict) -> None:
    from registry import Registry

    reg = Registry(root)
    m = reg.publish("so8t-tiny", {
        "gguf/aaa_f16.gguf": b"GGUF not a model: the served GGUF is the quantized one",
        "gguf/tinyeval_Q8_0.gguf": tiny_gguf,
        "gguf/decision_prompt.json": setup["prompt_path"],
        "calibration/calibration_results.json": setup["cal_path"],
    })
    reg.promote("so8t-tiny", m.version, "production", reason="test")


def test_registry_reference_gives_the_same_numbers_as_direct_paths(tiny_gguf, setup, tmp_path, capsys):
    root = tmp_path / "registry"
    _publish(root, tiny_gguf, setup)
    files = [setup["files"]["tagged"], setup["files"]["plain"]]
    direct, via_alias, via_version = tmp_path / "direct", tmp_path / "alias", tmp_path / "version"
    assert main(_args(tiny_gguf, files, direct, setup["cal_path"], "--decision_prompt", str(setup["prompt_path"]))) == 0
    assert main([*_args("so8t-tiny@production", files, via_alias), "--registry_root", str(root)]) == 0
    assert main([*_args("so8t-tiny@v1", files, via_version), "--registry_root", str(root)]) == 0
    capsys.readouterr()
    ref = json.loads((direct / "evaluation.json").read_text(encoding="utf-8"))
    for out in (via_alias, via_version):
        doc = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
        reg = doc["model"]["registry"]
        assert reg["name"] == "so8t-tiny" and reg["version"] == "v1" and reg["root"] == str(root)
        assert reg["gguf_file"] == "gguf/tinyeval_Q8_0.gguf"
        assert reg["calibration_file"] == "calibration/calibration_results.json"
        assert reg["decision_prompt_file"] == "gguf/decision_prompt.json"
        assert doc["model"]["sha256"] == ref["model"]["sha256"]
        assert doc["decision_prompt"]["sha256"] == PROMPT.sha256() == ref["decision_prompt"]["sha256"]
        for key in ("temperature", "tau_deny", "tau_escalate", "sha256"):
            assert doc["calibration"][key] == ref["calibration"][key]
        assert [f["groups"] for f in doc["files"]] == [f["groups"] for f in ref["files"]]
    # The same numbers as the independent computation with the version's prompt.
    records = setup["records"]["plain"]
    y = np.array([LABELS.index(r["label"]) for r in records])
    cal = setup["cal"]
    d = _decide(_probs(_z(tiny_gguf, records, PROMPT), cal["temperature"]), cal["tau_deny"], cal["tau_escalate"])
    _check_group(ref["files"][1]["groups"][0], y, d, CONF)


def test_registry_root_defaults_to_the_environment(tiny_gguf, setup, tmp_path, monkeypatch, capsys):
    root = tmp_path / "registry"
    _publish(root, tiny_gguf, setup)
    monkeypatch.setenv("SO8T_REGISTRY", str(root))
    out = tmp_path / "eval"
    assert main(_args("so8t-tiny@production", [setup["files"]["plain"]], out)) == 0, capsys.readouterr().err
    assert json.loads((out / "evaluation.json").read_text())["model"]["registry"]["root"] == str(root)


def test_served_gguf_rule():
    """The rule of release/smoke.py main_gguf, restated in so8t.calibrate.evaluate (so8t may not import release/)."""
    from registry.models import FileEntry, infer_kind
    from so8t.errors import ModelError

    class Manifest:  # the fields the rule reads
        def __init__(self, files, parameters=None):
            self.name, self.version = "m", "v1"
            self.files = [FileEntry(path=p, sha256="0" * 64, size=1, kind=infer_kind(p)) for p in files]
            self.parameters = parameters or {}

    assert served_gguf(Manifest(["gguf/a_f16.gguf", "gguf/a_Q4_K_M.gguf", "gguf/a_Q8_0.gguf"])) == "gguf/a_Q4_K_M.gguf"
    assert served_gguf(Manifest(["gguf/a_f16.gguf"])) == "gguf/a_f16.gguf"
    assert served_gguf(Manifest(["gguf/a_f16.gguf", "gguf/a_Q8_0.gguf"], {"main_gguf": "gguf/a_f16.gguf"})) == \
        "gguf/a_f16.gguf"
    with pytest.raises(ModelError, match="holds no GGUF"):
        served_gguf(Manifest(["calibration/calibration_results.json"]))
    with pytest.raises(ModelError, match="main_gguf"):
        served_gguf(Manifest(["gguf/a_Q8_0.gguf"], {"main_gguf": "gguf/gone.gguf"}))


# ----------------------------------------------------------------------------- bad input
def _bad_case(name: str, tmp_path: Path, tiny_gguf: Path, setup: dict) -> tuple[list[str], str]:
    data, cal, out = setup["files"]["plain"], setup["cal_path"], tmp_path / "out"
    model: object = tiny_gguf
    good = [{"text": "hello there", "label": "ALLOW"}]
    bad = tmp_path / "bad.jsonl"
    extra: list[str] = []
    if name == "missing_model":
        model, pattern = tmp_path / "nope.gguf", "model file not found"
    elif name == "not_gguf":
        model = tmp_path / "model.gguf"
        model.write_text("this is not a model")
        pattern = "not a GGUF file"
    elif name == "missing_data":
        data, pattern = tmp_path / "absent.jsonl", r"absent.jsonl: data file not found"
    elif name == "empty_data":
        bad.write_text("")
        data, pattern = bad, r"bad.jsonl: no records \(empty file\)"
    elif name == "record_without_label":
        write_jsonl(bad, [*good, {"text": "no label here"}])
        data, pattern = bad, r"bad.jsonl:2: field 'label': missing"
    elif name == "bad_label":
        write_jsonl(bad, [*good, {"text": "hi", "label": "MAYBE"}])
        data, pattern = bad, r"bad.jsonl:2: field 'label': 'MAYBE' is not one of"
    elif name == "malformed_json":
        bad.write_text(json.dumps(good[0]) + "\n{not json\n")
        data, pattern = bad, r"bad.jsonl:2: malformed JSON"
    elif name == "unknown_field":
        write_jsonl(bad, [{**good[0], "topic": "x"}])
        data, pattern = bad, r"bad.jsonl:1: field 'topic': unknown field"
    elif name == "second_file_bad":
        write_jsonl(bad, [*good, {"text": "   ", "label": "DENY"}])
        data, pattern = f"{data},{bad}", r"bad.jsonl:2: field 'text'"
    elif name == "empty_data_entry":
        data, pattern = f"{data},", r"--data .*empty file name"
    elif name == "data_twice":
        data, pattern = f"{data},{data}", r"--data: .*plain.jsonl is listed twice"
    elif name == "calibration_not_json":
        cal = tmp_path / "cal.json"
        cal.write_text("{not json")
        pattern = r"cal.json:1: malformed JSON at column 2: .*: pass the calibration_results.json"
    elif name == "calibration_missing_key":
        cal = tmp_path / "cal.json"
        cal.write_text(json.dumps({"temperature": 1.0, "tau_deny": 0.5}))
        pattern = r"cal.json: 'tau_escalate' is None"
    elif name == "calibration_bad_temperature":
        cal = tmp_path / "cal.json"
        cal.write_text(json.dumps({"temperature": 0, "tau_deny": 0.5, "tau_escalate": 0.5}))
        pattern = r"cal.json: temperature 0.0 must be > 0"
    elif name == "calibration_not_found":
        cal, pattern = tmp_path / "absent_cal.json", r"absent_cal.json: calibration file not found \(--calibration\)"
    elif name == "no_default_calibration":
        cal, pattern = None, r"--calibration: no calibration_results.json beside .*pass --calibration"
    elif name == "bad_decision_prompt":
        p = tmp_path / "prompt.json"
        p.write_text(json.dumps({"system": "x", "user_template": "no field"}))
        extra, pattern = ["--decision_prompt", str(p)], r"prompt.json: field 'user_template'"
    elif name == "output_dir_is_a_file":
        out.write_text("x")
        pattern = r"--output_dir .*out: exists and is not a directory"
    elif name == "output_dir_under_a_file":
        (tmp_path / "afile").write_text("x")
        out, pattern = tmp_path / "afile" / "out", r"--output_dir .*afile is a file, so the directory cannot be created"
    elif name == "bad_confidence":
        extra, pattern = ["--confidence", "1.5"], r"confidence: Input should be less than 1"
    elif name == "bad_scoring_mode":
        extra, pattern = ["--scoring_mode", "greedy"], r"scoring_mode: Input should be 'auto', 'first-token' or"
    elif name == "unknown_registry_model":
        model, extra = "nomodel@production", ["--registry_root", str(tmp_path / "reg")]
        pattern = r"--model nomodel@production: model 'nomodel' not found in registry"
    elif name == "unknown_alias":
        _publish(tmp_path / "reg", tiny_gguf, setup)
        model, extra = "so8t-tiny@staging", ["--registry_root", str(tmp_path / "reg")]
        pattern = r"--model so8t-tiny@staging: alias 'staging' of model 'so8t-tiny' is not set"
    elif name == "unknown_version":
        _publish(tmp_path / "reg", tiny_gguf, setup)
        model, extra = "so8t-tiny@v9", ["--registry_root", str(tmp_path / "reg")]
        pattern = r"--model so8t-tiny@v9: version v9 of model 'so8t-tiny' does not exist"
    elif name == "bad_reference":
        model, pattern = "so8t-tiny@", r"--model 'so8t-tiny@': a registry reference is NAME@REF"
    else:
        raise AssertionError(name)
    return [*_args(model, [data], out, cal), *extra], pattern


BAD_CASES = ["missing_model", "not_gguf", "missing_data", "empty_data", "record_without_label", "bad_label",
             "malformed_json", "unknown_field", "second_file_bad", "empty_data_entry", "data_twice",
             "calibration_not_json", "calibration_missing_key", "calibration_bad_temperature", "calibration_not_found",
             "no_default_calibration", "bad_decision_prompt", "output_dir_is_a_file", "output_dir_under_a_file",
             "bad_confidence", "bad_scoring_mode", "unknown_registry_model", "unknown_alias", "unknown_version",
             "bad_reference"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(case, tiny_gguf, setup, tmp_path, capsys, monkeypatch):
    from so8t.calibrate import scoring

    def no_scoring(*a, **k):
        raise AssertionError("scored before the inputs were checked")

    monkeypatch.setattr(scoring, "score_gguf", no_scoring)
    args, pattern = _bad_case(case, tmp_path, tiny_gguf, setup)
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith("so8t: error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), err
    assert "Traceback" not in err
    assert not (tmp_path / "out").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created, no temporaries left


def test_unwritable_output_dir_is_refused_before_scoring(tiny_gguf, setup, capsys):
    from pathlib import Path

    # /proc refuses new directories even to root (CI runs as root, so permission bits prove nothing)
    rc = main(_args(tiny_gguf, [setup["files"]["plain"]], Path("/proc") / "so8t-evaluate-out", setup["cal_path"]))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("so8t: error:")]
    assert rc == 2 and len(lines) == 1 and "--output_dir" in lines[0] and "Traceback" not in err, err


def test_help_lists_every_flag_with_its_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name, field in EvaluateConfig.model_fields.items():
        assert f"--{name}" in text, name
        assert field.description and " ".join(field.description.split())[:40] in text, name


def test_a_real_load_decodes_under_the_policy(tiny_gguf):
    """The crash was on the first decode: a real load through the one loader decodes and its logits are finite."""
    import numpy as np

    from so8t.llama import open_llama

    llm = open_llama(tiny_gguf, 64, n_threads=1)
    try:
        assert llm.model_params.use_extra_bufts is False
        llm.eval(llm.tokenize(b"hello world"))
        assert np.isfinite(np.asarray(llm.scores[llm.n_tokens - 1])).all()
    finally:
        llm.close()
