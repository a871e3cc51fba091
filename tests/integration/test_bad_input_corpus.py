"""The bad-input corpus: every CLI, fed what users get wrong, answers in one line.

Each case runs ``so8t ...`` in-process in an empty working directory and must end with exit code 2,
exactly one ``error:`` line on stderr, no traceback, and no file or directory created (in the
working directory, where every output of the case points). Work that would cost minutes (scoring,
generation) is replaced by a tripwire: a case that reaches it has checked its inputs too late.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from so8t.cli import main as so8t_main

REPO = Path(__file__).resolve().parents[2]
GOOD_LABELS = REPO / "data" / "safety_val.jsonl"
GOOD_QUALITY = REPO / "data" / "ab_eval_quality.jsonl"


@dataclass
class Ctx:
    """What a case may point at: a fresh working dir (outputs) and shared, read-only inputs."""

    work: Path
    inputs: Path
    gguf: Path
    tiny: Path
    adapter: Path
    cal: Path
    env: dict[str, str] = field(default_factory=dict)
    stdin: bytes | None = None


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]
    pattern: str


# ----------------------------------------------------------------------------- inputs
BAD_DATA: dict[str, tuple[bytes | None, str]] = {
    # name: (file content; None = the path does not exist), what the error says
    "not_utf8": (b'{"text": "caf\xe9", "label": "ALLOW"}\n', r":1: not UTF-8 text"),
    "binary": (bytes(range(256)) * 4, r":1: (not UTF-8 text|malformed JSON)"),
    "malformed": (b'{"text": "x", "label": "ALLOW"}\n{"text": "y", "label": \n', r":2: malformed JSON"),
    "array": (b"[1, 2]\n", r":1: expected a JSON object"),
    "duplicate_key": (b'{"text": "a", "text": "b", "label": "ALLOW"}\n', r":1: field 'text': given twice"),
    "bad_label": (b'{"text": "a", "label": "MAYBE"}\n', r":1: field 'label': 'MAYBE' is not one of"),
    "unknown_field": (b'{"text": "a", "colour": "red"}\n', r":1: field 'colour': unknown field"),
    "text_not_string": (b'{"text": 3, "label": "DENY"}\n', r":1: field 'text'"),
    "text_null": (b'{"text": null, "label": "DENY"}\n', r":1: field 'text'"),
    "empty_source": (b'{"text": "a", "label": "DENY", "source": ""}\n', r":1: field 'source'"),
    "instruction_without_output": (b'{"instruction": "q"}\n', r":1: field 'output': missing"),
    "empty_file": (b"", r"no records"),
    "blank_lines_only": (b"\n\n  \n", r"no records"),
    "huge_line": (b'{"text": "' + b"a" * (1 << 20) + b'", "label": "ALLOW"}\n', r":1: the line is \d+ bytes, over the limit"),
    "missing_file": (None, r"not found"),
    "directory": (b"DIR", r"not found|directory"),
}


def _data(ctx: Ctx, name: str) -> str:
    content, _ = BAD_DATA[name]
    path = ctx.inputs / f"{name}.jsonl"
    if content == b"DIR":
        path.mkdir(exist_ok=True)
    elif content is not None and not path.exists():
        path.write_bytes(content)
    return str(path)


def _label_only_data(ctx: Ctx) -> str:
    path = ctx.inputs / "text_without_label.jsonl"
    path.write_text('{"text": "a", "label": "ALLOW"}\n{"text": "no label"}\n', encoding="utf-8")
    return str(path)


BROKEN_MODELS = {
    "missing_dir": r"not found|does not exist",
    "empty_dir": r"no config\.json",
    "config_empty_object": r"config\.json: field 'model_type': missing",
    "config_not_json": r"config\.json:1: not valid JSON",
    "config_array": r"config\.json: expected a JSON object",
    "weights_text": r"model\.safetensors: not a readable safetensors file",
    "weights_truncated": r"model\.safetensors: truncated",
    "no_weights": r"no weights",
    "no_tokenizer": r"no tokenizer",
    "missing_layers": r"weight\(s\) that config\.json needs are not in the checkpoint",
    "wrong_shape": r"has the wrong shape for config\.json",
}
LOADING_ONLY = {"missing_layers", "wrong_shape"}  # found by loading: train and bake, not convert


def _broken_model(ctx: Ctx, kind: str) -> str:
    d = ctx.inputs / f"model_{kind}"
    if kind == "missing_dir" or d.exists():
        return str(d)
    shutil.copytree(ctx.tiny, d)
    cfg = json.loads((d / "config.json").read_text())
    weights = d / "model.safetensors"
    if kind == "empty_dir":
        shutil.rmtree(d)
        d.mkdir()
    elif kind == "config_empty_object":
        (d / "config.json").write_text("{}")
    elif kind == "config_not_json":
        (d / "config.json").write_text("not json")
    elif kind == "config_array":
        (d / "config.json").write_text("[]")
    elif kind == "weights_text":
        weights.write_text("these are not weights")
    elif kind == "weights_truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif kind == "no_weights":
        weights.unlink()
    elif kind == "no_tokenizer":
        for f in d.iterdir():
            if f.name.startswith("tokenizer") or f.suffix == ".model" or f.name == "special_tokens_map.json":
                f.unlink()
    elif kind == "missing_layers":
        cfg["num_hidden_layers"] += 1
        (d / "config.json").write_text(json.dumps(cfg))
    elif kind == "wrong_shape":
        cfg["intermediate_size"] += 8
        (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


BAD_GGUF = {
    "missing": r"does not exist|not found",
    "directory": r"does not exist|not found|not a|directory",
    "text_file": r"not a (readable )?GGUF",
    "empty_file": r"not a (readable )?GGUF|empty",
    "truncated": r"could not load|truncated|not a complete|cannot load",
}


def _bad_gguf(ctx: Ctx, kind: str) -> str:
    p = ctx.inputs / f"bad_{kind}.gguf"
    if kind == "directory":
        p.mkdir(exist_ok=True)
    elif kind == "text_file":
        p.write_text("not a model")
    elif kind == "empty_file":
        p.write_bytes(b"")
    elif kind == "truncated":
        with ctx.gguf.open("rb") as f:
            p.write_bytes(f.read(200_000))
    return str(p)


# ----------------------------------------------------------------------------- command lines
def _train(ctx: Ctx, *extra: str, data: str | None = None, base: str | None = None, out: str | None = None) -> list[str]:
    return ["train", "--base_model", base or str(ctx.tiny), "--dataset", data or str(GOOD_LABELS),
            "--output_dir", out or str(ctx.work / "out"), "--max_steps", "1", "--save_steps", "1", "--batch_size", "2",
            "--max_length", "512", *extra]


def _calibrate(ctx: Ctx, *extra: str, data: str | None = None, model: str | None = None) -> list[str]:
    return ["calibrate", "--model", model or str(ctx.gguf), "--val_data", data or str(GOOD_LABELS),
            "--output_dir", str(ctx.work / "out"), "--n_threads", "1", *extra]


def _evaluate(ctx: Ctx, *extra: str, data: str | None = None, model: str | None = None, cal: str | None = None) -> list[str]:
    return ["evaluate", "--model", model or str(ctx.gguf), "--calibration", cal or str(ctx.cal),
            "--data", data or str(GOOD_LABELS), "--output_dir", str(ctx.work / "out"), "--n_threads", "1", *extra]


def _ab(ctx: Ctx, *extra: str, safety: str | None = None, quality: str | None = None, model_a: str | None = None) -> list[str]:
    return ["ab", "--model_a", model_a or str(ctx.gguf), "--model_b", str(ctx.gguf),
            "--safety_data", safety or str(GOOD_LABELS), "--quality_data", quality or str(GOOD_QUALITY),
            "--limit", "2", "--max_new_tokens", "2", "--skip_memory", "--output_dir", str(ctx.work / "out"), *extra]


def _bake(ctx: Ctx, *extra: str, base: str | None = None, out: str | None = None) -> list[str]:
    return ["bake", "--model_path", str(ctx.adapter), "--output_path", out or str(ctx.work / "baked"),
            *(["--base_model", base] if base else []), *extra]


def _decide(ctx: Ctx, *extra: str, data: str | None = None, out: str | None = None) -> list[str]:
    return ["decide", "--model", str(ctx.gguf), "--calibration", str(ctx.cal), "--input", data or str(GOOD_LABELS),
            "--output", out or str(ctx.work / "decisions.jsonl"), "--n_threads", "1", *extra]


#: BAD_DATA entries that are bad request files too (decide reads {"text"} and ignores labels and other fields)
DECIDE_BAD_DATA = ("not_utf8", "binary", "malformed", "array", "duplicate_key", "text_not_string", "text_null",
                   "empty_file", "blank_lines_only", "huge_line", "missing_file", "directory")


def _reg(ctx: Ctx, *args: str) -> list[str]:
    return ["registry", "--root", str(ctx.inputs / "registry"), *args]


OUT_PATHS = {
    "is_a_file": (lambda c: str(c.work / "afile"), r"exists and is not a directory|is a file|not an empty directory"),
    "under_a_file": (lambda c: str(c.work / "afile" / "sub"), r"is a file"),
    "unwritable": (lambda c: "/proc/so8t-out/x", r"cannot write|not writable|Permission|Read-only|No such file"),
}


def _cases() -> list[Case]:
    cases: list[Case] = []
    add = lambda id_, argv, pattern: cases.append(Case(id_, argv, pattern))  # noqa: E731

    for name, (_, pat) in BAD_DATA.items():
        add(f"train-data-{name}", lambda c, n=name: _train(c, data=_data(c, n)), pat)
        add(f"calibrate-data-{name}", lambda c, n=name: _calibrate(c, data=_data(c, n)), pat)
        add(f"evaluate-data-{name}", lambda c, n=name: _evaluate(c, data=_data(c, n)), pat)
        add(f"ab-safety-{name}", lambda c, n=name: _ab(c, safety=_data(c, n)), pat)
        add(f"ab-quality-{name}", lambda c, n=name: _ab(c, quality=_data(c, n)),
            pat if name not in ("bad_label", "empty_source") else r"field|no reference|instruction")
    for name in DECIDE_BAD_DATA:
        add(f"decide-input-{name}", lambda c, n=name: _decide(c, data=_data(c, n)), BAD_DATA[name][1])
    for cmd, build in (("calibrate", _calibrate), ("evaluate", _evaluate)):
        add(f"{cmd}-data-text_without_label", lambda c, b=build: b(c, data=_label_only_data(c)), r":2: field 'label': missing")
    add("train-data-second_file_bad", lambda c: _train(c, data=f"{GOOD_LABELS},{_data(c, 'bad_label')}"), r"bad_label\.jsonl:1")

    for kind, pat in BROKEN_MODELS.items():
        add(f"train-model-{kind}", lambda c, k=kind: _train(c, base=_broken_model(c, k)), pat)
        add(f"bake-model-{kind}", lambda c, k=kind: _bake(c, base=_broken_model(c, k)), pat)
        if kind not in LOADING_ONLY:
            add(f"convert-model-{kind}", lambda c, k=kind: ["convert", _broken_model(c, k), str(c.work / "gguf"), "Q8_0"],
                pat)

    for kind, (path, pat) in OUT_PATHS.items():
        add(f"train-out-{kind}", lambda c, p=path: _train(c, out=p(c)), pat)
        add(f"bake-out-{kind}", lambda c, p=path: _bake(c, out=p(c)), pat)
        add(f"calibrate-out-{kind}", lambda c, p=path: [*_calibrate(c)[:5], "--output_dir", p(c), *_calibrate(c)[7:]], pat)
        add(f"evaluate-out-{kind}", lambda c, p=path: [*_evaluate(c)[:7], "--output_dir", p(c), *_evaluate(c)[9:]], pat)
        add(f"ab-out-{kind}", lambda c, p=path: [*_ab(c)[:-2], "--output_dir", p(c)], pat)
        add(f"convert-out-{kind}", lambda c, p=path: ["convert", str(c.tiny), p(c), "Q8_0"], pat)
        add(f"modelfile-out-{kind}", lambda c, p=path: ["modelfile", "--model", str(c.gguf), "--output", p(c) + "/Modelfile"],
            r"is a file|not a directory|cannot write|No such file")
        add(f"decide-out-{kind}", lambda c, p=path: _decide(c, out=p(c) + "/decisions.jsonl"),
            r"is a file|not a directory|cannot write|No such file")
        add(f"registry-export-{kind}", lambda c, p=path: _reg(c, "export", "m", "v1", p(c)),
            r"not an empty directory|is a file|Permission|No such file|Read-only|cannot")

    numbers = [
        ("train", "--learning_rate", "inf"), ("train", "--learning_rate", "nan"), ("train", "--learning_rate", "-1"),
        ("train", "--learning_rate", "0"), ("train", "--pet_lambda", "inf"), ("train", "--pet_lambda", "nan"),
        ("train", "--pet_lambda", "-1"), ("train", "--num_epochs", "inf"), ("train", "--num_epochs", "nan"),
        ("train", "--max_steps", "-5"), ("train", "--batch_size", "0"), ("train", "--max_length", "0"),
        ("train", "--warmup_steps", "-1"), ("train", "--lora_r", "0"), ("train", "--seed", "x"), ("train", "--seed", "1.5"),
        ("calibrate", "--holdout_fraction", "1.5"), ("calibrate", "--ece_max", "nan"),
        ("calibrate", "--far_max", "-0.1"), ("calibrate", "--n_bins", "0"), ("calibrate", "--n_ctx", "-1"),
        ("evaluate", "--confidence", "1.5"), ("evaluate", "--confidence", "nan"), ("evaluate", "--n_ctx", "0"),
        ("ab", "--confidence", "nan"), ("ab", "--limit", "-1"), ("ab", "--max_new_tokens", "0"),
        ("ab", "--n_bootstrap", "0"),
    ]
    builders = {"train": _train, "calibrate": _calibrate, "evaluate": _evaluate, "ab": _ab}
    for cmd, flag, value in numbers:
        add(f"{cmd}{flag}={value}", lambda c, b=builders[cmd], f=flag, v=value: [*b(c), f, v],
            rf"{flag.lstrip('-')}|{re.escape(value)}|invalid")
    for flag, value in (("--temp", "nan"), ("--temp", "inf"), ("--temp", "-1"), ("--top_p", "nan"), ("--top_p", "2"),
                        ("-t", "-3"), ("-n", "-5"), ("--repeat_penalty", "nan"), ("--ctx_size", "-1"), ("--top_k", "-2")):
        add(f"run{flag}={value}", lambda c, f=flag, v=value: ["run", "-m", str(c.gguf), "-p", "hi", f, v],
            r"temp|top_p|threads|n_predict|repeat|ctx|top_k|invalid|must")

    for kind, pat in BAD_GGUF.items():
        add(f"run-gguf-{kind}", lambda c, k=kind: ["run", "-m", _bad_gguf(c, k), "-p", "hi", "-n", "2"], pat)
        add(f"modelfile-gguf-{kind}", lambda c, k=kind: ["modelfile", "--model", _bad_gguf(c, k), "--output",
                                                         str(c.work / "Modelfile")], pat)
        add(f"calibrate-gguf-{kind}", lambda c, k=kind: _calibrate(c, model=_bad_gguf(c, k)), pat)
        add(f"evaluate-gguf-{kind}", lambda c, k=kind: _evaluate(c, model=_bad_gguf(c, k)), pat + r"|model file not found")
        add(f"ab-gguf-{kind}", lambda c, k=kind: _ab(c, model_a=_bad_gguf(c, k)), pat)
        add(f"decide-gguf-{kind}", lambda c, k=kind: ["decide", "hi", "--model", _bad_gguf(c, k), "--calibration",
                                                      str(c.cal)], pat + r"|model file not found")

    deep = '{"a": ' * 300 + "1" + "}" * 300
    for id_, args, pat in (
        ("show-unknown-model", ("show", "nosuch", "v1"), r"nosuch.* does not exist|not found"),
        ("show-unknown-version", ("show", "m", "v9"), r"v9"),
        ("show-unicode-digit", ("show", "m", "١"), r"invalid"),
        ("verify-unknown-model", ("verify", "nosuch"), r"not found"),
        ("rollback-unknown-model", ("rollback", "nosuch"), r"no versions|not found"),
        ("history-unknown-model", ("history", "nosuch"), r"not found"),
        ("promote-unknown-version", ("promote", "m", "v9"), r"v9"),
        ("promote-evidence-not-json", ("promote", "m", "v1", "--evidence", "{nope"), r"evidence"),
        ("promote-evidence-deep", ("promote", "m", "v1", "--evidence", deep), r"deep|depth|nested"),
        ("promote-evidence-nan", ("promote", "m", "v1", "--evidence", '{"ece": NaN}'), r"finite|NaN|number"),
        ("promote-bad-alias", ("promote", "m", "v1", "--alias", "v2"), r"alias"),
        ("publish-bad-name", ("publish", "Bad Name", str(REPO / "data" / "licenses")), r"name"),
        ("publish-parent-unknown", ("publish", "m", str(REPO / "data" / "licenses"), "--parent", "v42"), r"parent 'v42'"),
        ("publish-parent-malformed", ("publish", "m", str(REPO / "data" / "licenses"), "--parent", "x y"), r"parent"),
    ):
        add(f"registry-{id_}", lambda c, a=args: _reg(c, *a), pat)
    add("registry-publish-missing-dir", lambda c: _reg(c, "publish", "m", str(c.inputs / "nothing-here")), r"not|exist")
    add("registry-publish-gitattributes", lambda c: _reg(c, "publish", "m", _with_reserved(c)), r"so8t-registry\.json|reserved")
    add("registry-verify-missing-root", lambda c: ["registry", "--root", str(c.work / "noroot"), "verify"], r"does not exist")
    add("registry-mirror-credentials", lambda c: _reg(c, "mirror", "m", "--repo", "a/b", "--endpoint",
                                                      "http://user:s3cret@localhost:1"), r"credentials")

    add("base-prepare-unknown", lambda c: ["base", "prepare", "gpt-17"], r"unknown")
    add("train-base-unknown-name", lambda c: _train(c, base="gpt-17"), r"not found")
    add("train-cache-is-a-file", lambda c: _env(c, "SO8T_CACHE", str(c.inputs / "cachefile"), _train(c, base="smollm2")),
        r"SO8T_CACHE=.*cannot write")
    add("base-prepare-cache-unwritable", lambda c: _env(c, "SO8T_CACHE", "/proc/so8t-cache", ["base", "prepare", "smollm2"]),
        r"SO8T_CACHE=.*cannot write")
    add("decide-stdin-not-utf8", lambda c: _stdin(c, b"\xff\xfe bad", ["decide", "--model", str(c.gguf), "--calibration",
                                                                       str(c.cal)]), r"stdin: not UTF-8")
    add("decide-calibration-missing", lambda c: ["decide", "hi", "--model", str(c.gguf)], r"--calibration: no")
    add("decide-text-blank", lambda c: ["decide", " ", "--model", str(c.gguf), "--calibration", str(c.cal)],
        r"TEXT: empty")
    add("run-stdin-not-utf8", lambda c: _stdin(c, b"\xff\xfe bad", ["run", "-m", str(c.gguf), "-n", "2"]), r"stdin: not UTF-8")
    add("run-prompt-not-utf8", lambda c: ["run", "-m", str(c.gguf), "-n", "2", "-p", b"a\xffb".decode("utf-8", "surrogateescape")],
        r"--prompt: not UTF-8")
    for kind in ("missing_dir", "empty_dir", "config_not_json", "config_array"):  # the dry run reads config.json only
        add(f"train-dry_run-model-{kind}", lambda c, k=kind: _train(c, "--dry_run", base=_broken_model(c, k)),
            BROKEN_MODELS[kind])
    add("train-dry_run-model-config_empty_object",
        lambda c: _train(c, "--dry_run", base=_broken_model(c, "config_empty_object")),
        r"config\.json: field 'hidden_size': missing")
    for value in ("nan", "inf", "0", "-12"):
        add(f"train-dry_run--gpu_memory_gb={value}", lambda c, v=value: _train(c, "--dry_run", "--gpu_memory_gb", v),
            r"--gpu_memory_gb .*positive number of GiB")
    add("train-gpu_memory_gb-without-dry_run", lambda c: _train(c, "--gpu_memory_gb", "12"),
        r"--gpu_memory_gb is for --dry_run")
    add("train-prompt-file-broken", lambda c: _train(c, "--decision_prompt", _write(c, "prompt.json", "{")), r"prompt\.json")
    add("calibrate-prompt-file-missing", lambda c: _calibrate(c, "--decision_prompt", str(c.inputs / "none.json")), r"none\.json")
    add("evaluate-calibration-not-json", lambda c: _evaluate(c, cal=_write(c, "cal.json", "{")), r"cal\.json")
    add("train-resume-missing", lambda c: _train(c, "--resume_from_checkpoint", str(c.inputs / "nockpt")), r"nockpt|checkpoint")
    return cases


def _with_reserved(ctx: Ctx) -> str:
    d = ctx.inputs / "reserved"
    d.mkdir(exist_ok=True)
    (d / "so8t-registry.json").write_text("{}")
    (d / "model.gguf").write_bytes(b"GGUF")
    return str(d)


def _write(ctx: Ctx, name: str, text: str) -> str:
    p = ctx.inputs / name
    p.write_text(text)
    return str(p)


def _env(ctx: Ctx, key: str, value: str, argv: list[str]) -> list[str]:
    if key == "SO8T_CACHE" and "cachefile" in value:
        Path(value).write_text("not a directory")
    ctx.env[key] = value
    return argv


def _stdin(ctx: Ctx, data: bytes, argv: list[str]) -> list[str]:
    ctx.stdin = data
    return argv


CASES = _cases()


# ----------------------------------------------------------------------------- fixtures and the test
@pytest.fixture(scope="module")
def shared(tiny_llama, tmp_path_factory) -> dict:
    """A tiny trained adapter (for bake), a calibration file and a registry with one version."""
    from so8t.base_models import embedded_gguf

    root = tmp_path_factory.mktemp("corpus_shared")
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"add {i} and 1", "output": str(i + 1)}) + "\n"
                            for i in range(8)), encoding="utf-8")
    assert so8t_main(["train", "--base_model", str(tiny_llama), "--dataset", str(data), "--output_dir",
                      str(root / "adapter"), "--max_steps", "1", "--save_steps", "1", "--batch_size", "4",
                      "--max_length", "96"]) == 0
    cal = root / "calibration_results.json"
    cal.write_text(json.dumps({"temperature": 1.0, "tau_deny": 0.5, "tau_escalate": 0.5}))
    return {"adapter": root / "adapter", "cal": cal, "gguf": embedded_gguf("smollm2")}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(case: Case, shared, tiny_llama, tmp_path, capsys, monkeypatch):
    from so8t.ab import runner as abtest
    from so8t.calibrate import scoring

    def tripwire(*_a, **_k):
        raise AssertionError(f"{case.id}: the work started before the inputs were checked")

    monkeypatch.setattr(scoring, "score_gguf", tripwire)
    monkeypatch.setattr(abtest, "GreedyGenerator", tripwire)
    monkeypatch.setattr(scoring, "_load_model", tripwire)  # so8t decide loads its model through it
    work, inputs = tmp_path / "work", tmp_path / "inputs"
    work.mkdir()
    inputs.mkdir()
    (work / "afile").write_text("a file where a directory is expected")
    from registry import Registry

    Registry(inputs / "registry").publish("m", {"model.gguf": b"GGUF" * 10})
    ctx = Ctx(work=work, inputs=inputs, gguf=shared["gguf"], tiny=tiny_llama, adapter=shared["adapter"], cal=shared["cal"])
    argv = case.argv(ctx)
    for k, v in ctx.env.items():
        monkeypatch.setenv(k, v)
    if ctx.stdin is not None:
        import io

        fake = io.TextIOWrapper(io.BytesIO(ctx.stdin), encoding="utf-8")
        fake.isatty = lambda: False  # type: ignore[method-assign]
        monkeypatch.setattr(sys, "stdin", fake)
    monkeypatch.chdir(work)
    before = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    try:
        rc = so8t_main(argv)
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert rc == 2, f"exit {rc}: {err}"
    errors = [line for line in err.splitlines() if re.match(r"so8t( [a-z]+)*: error:", line)]
    assert len(errors) == 1, err
    assert re.search(case.pattern, errors[0]), errors[0]
    after = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    assert after == before, f"written: {sorted(set(after) - set(before))}"


def test_the_corpus_is_large_and_covers_every_command():
    assert len(CASES) >= 150 and len({c.id for c in CASES}) == len(CASES)
    commands = {c.id.split("-")[0].split("--")[0] for c in CASES}
    assert {"train", "calibrate", "evaluate", "ab", "bake", "convert", "modelfile", "run", "registry", "base",
            "decide"} <= commands
    assert os.environ.get("SO8T_LOG_DIR")  # logs of the cases go to the test log dir, not the work dirs
