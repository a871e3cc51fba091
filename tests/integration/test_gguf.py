"""GGUF conversion and quantization with the real llama.cpp converter and C API (no mocks).

Bounds measured on the tiny fixtures (hidden 256): F16 KL ~3e-8, Q8_0 ~1.3e-5, Q4_K_M ~1.5e-3;
the assertions below leave an order of magnitude or more of headroom.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from gguf import GGUFReader

from so8t.cli import main
from so8t.export.gguf import K_TYPES, REPORT, SIDECAR_SUFFIX, convert_to_gguf

QUANTS = ("Q8_0", "Q5_K_M", "Q4_K_M")
NAMES = {"tiny_llama": "tinyllama", "tiny_phi3": "tinyp"}  # a 'phi3' name needs <|endoftext|> in llama.cpp


def _types(path: Path) -> tuple[Counter, dict[str, str]]:
    """Our own reading of a file: type histogram and each >=2-D tensor's type."""
    r = GGUFReader(str(path))
    hist = Counter(t.tensor_type.name for t in r.tensors)
    two_d = {t.name: t.tensor_type.name for t in r.tensors if sum(int(d) > 1 for d in t.shape) >= 2}
    return hist, two_d


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_phi3"])
def converted(request, tmp_path_factory):
    model = request.getfixturevalue(request.param)
    out = tmp_path_factory.mktemp(f"gguf_{request.param}")
    result = convert_to_gguf(model, out, QUANTS, name=NAMES[request.param])
    return request.param, model, out, result


def test_tiny_models_convert_quantize_and_report(converted):
    fixture, _, out, result = converted
    name = NAMES[fixture]
    assert sorted(p.name for p in out.glob("*.gguf")) == sorted(f"{name}_{q}.gguf" for q in ("f16", *QUANTS))
    report = json.loads((out / REPORT).read_text())
    files = {f["quant"]: f for f in report["files"]}
    assert set(files) == {"F16", *QUANTS}
    f16, q8, q4 = files["F16"]["fidelity"], files["Q8_0"]["fidelity"], files["Q4_K_M"]["fidelity"]
    assert f16["mean_kl"] < 1e-6 and f16["max_kl"] < 1e-5 and f16["top1_agreement"] >= 0.99, f16
    assert q8["mean_kl"] < 1e-3 and q8["top1_agreement"] >= 0.9, q8
    assert q4["mean_kl"] < 2e-2, q4
    assert f16["positions"] > 100
    for fid in (f16, q8, q4):  # robust statistics next to the mean, per probe too
        assert 0 <= fid["median_kl"] <= fid["max_kl"] and set(fid["per_probe_max_kl"]) == set(fid["per_probe_mean_kl"]), fid
        assert max(fid["per_probe_max_kl"].values()) == fid["max_kl"]
    for quant, rec in files.items():
        path = out / rec["file"]
        hist, two_d = _types(path)
        assert rec["tensor_types"] == dict(hist)
        assert rec["size_bytes"] == path.stat().st_size
        assert rec["n_tensors"] == sum(hist.values())
        expected_family = {"F16": {"F16"}, "Q8_0": {"Q8_0"}, "Q5_K_M": set(K_TYPES), "Q4_K_M": set(K_TYPES)}[quant]
        fallbacks = {n: t for n, t in two_d.items() if t not in expected_family}
        assert rec["fallback_tensors"] == fallbacks and rec["fallback_count"] == len(fallbacks) == 0, rec
    assert set(_types(out / files["Q4_K_M"]["file"])[1].values()) <= {"Q4_K", "Q6_K"}  # by-design K mix only
    assert files["Q4_K_M"]["llama_cpp_fallbacks"] == 0


def test_perplexity_chunks_and_kl_summary_follow_llama_perplexity():
    from so8t.export.fidelity import kl_summary, perplexity_chunks, scored_positions

    assert perplexity_chunks(list(range(10)), 4, bos_id=None) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # remainder dropped
    assert perplexity_chunks(list(range(10)), 4, bos_id=99) == [[99, 1, 2, 3], [99, 5, 6, 7]]  # BOS replaces the first
    assert scored_positions(4) == slice(2, 3)
    assert len(range(512)[scored_positions(512)]) == 512 - 1 - 512 // 2  # llama-perplexity's count per chunk
    s = kl_summary([0.0, 1.0, 2.0, 3.0, 94.0], [True, True, False, True, True])
    assert s["positions"] == 5 and s["mean_kl"] == 20.0 and s["median_kl"] == 2.0 and s["max_kl"] == 94.0
    assert s["stderr_kl"] == pytest.approx((1370 / 4) ** 0.5) and s["top1_agreement"] == 0.8  # sqrt(pop. var / (n - 1))
    assert kl_summary([], []) == {"positions": 0}


def test_corpus_fidelity_per_group_on_the_same_ids(converted):
    from transformers import AutoTokenizer

    from so8t.export.fidelity import corpus_fidelity

    fixture, model, out, _ = converted
    name, n_ctx = NAMES[fixture], 32
    groups = {"a": ["the gate rotates the hidden state before the projection", "calibration needs labelled data",
                    "quantization keeps the model small and the answers close to the original ones"],
              "b": ["temperature scaling"]}  # shorter than n_ctx: no chunk, paragraphs only
    files = [out / f"{name}_f16.gguf", out / f"{name}_Q8_0.gguf"]
    res = corpus_fidelity(model, files, groups, n_ctx=n_ctx, threads=1)
    tok = AutoTokenizer.from_pretrained(str(model))
    for g, texts in groups.items():
        stream = len(tok("\n\n".join(texts), add_special_tokens=False)["input_ids"])
        assert res["_tokens"][g] == {"chunked": n_ctx * (stream // n_ctx), "paragraphs": sum(len(tok(t)["input_ids"]) for t in texts)}
        for f in files:
            r = res[f.name][g]
            assert r["chunked"]["positions"] == (stream // n_ctx) * (n_ctx - 1 - n_ctx // 2)
            assert r["paragraphs"]["positions"] == res["_tokens"][g]["paragraphs"]
    assert res["_tokens"]["a"]["chunked"] >= 2 * n_ctx and res["_tokens"]["b"]["chunked"] == 0
    f16, q8 = res[files[0].name]["a"], res[files[1].name]["a"]
    for sample in ("chunked", "paragraphs"):  # any misaligned position or id would show as a large F16 KL
        assert f16[sample]["max_kl"] < 1e-5 and f16[sample]["top1_agreement"] >= 0.95, f16
        assert f16[sample]["mean_kl"] < q8[sample]["mean_kl"] < 1e-3, (f16, q8)


def test_quantize_output_and_token_embedding_types(converted, tmp_path):
    from so8t.errors import ConfigError
    from so8t.export.quantize import quantize_gguf

    fixture, _, out, _ = converted
    f16 = out / f"{NAMES[fixture]}_f16.gguf"
    dst = tmp_path / "q8_f16_ends.gguf"
    quantize_gguf(f16, dst, "Q8_0", threads=1, output_tensor_type="f16", token_embedding_type="F16")
    _, two_d = _types(dst)
    assert two_d.pop("output.weight") == "F16" and two_d.pop("token_embd.weight") == "F16"
    assert set(two_d.values()) == {"Q8_0"}
    default = dict(_types(out / f"{NAMES[fixture]}_Q8_0.gguf")[1])
    assert default["output.weight"] == default["token_embd.weight"] == "Q8_0"  # llama.cpp's choice for Q8_0
    with pytest.raises(ConfigError, match="unknown ggml tensor type 'Q9'"):
        quantize_gguf(f16, tmp_path / "bad.gguf", "Q8_0", output_tensor_type="Q9")
    assert not list(tmp_path.glob("*bad*"))


def test_every_file_loads_and_generates(converted):
    from so8t.serving.inference import generate

    _, _, out, _ = converted
    for path in sorted(out.glob("*.gguf")):
        pieces = list(generate(path, "calibration", n_predict=6, threads=1, temperature=0.0, raw=True, seed=0))
        assert pieces, path.name


def test_rerun_reuses_then_rebuilds_a_tampered_output(converted):
    fixture, model, out, _ = converted
    name = NAMES[fixture]
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.gguf")}
    again = convert_to_gguf(model, out, QUANTS, name=name)
    assert all(f.reused for f in again.files)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.gguf")} == mtimes
    target = out / f"{name}_Q8_0.gguf"
    with target.open("r+b") as f:  # same size, one byte flipped near the end
        f.seek(-10, 2)
        b = f.read(1)
        f.seek(-10, 2)
        f.write(bytes([b[0] ^ 0xFF]))
    third = convert_to_gguf(model, out, QUANTS, name=name, fidelity=False)
    reused = {f.quant: f.reused for f in third.files}
    assert reused == {"F16": True, "Q8_0": False, "Q5_K_M": True, "Q4_K_M": True}
    assert json.loads((out / (target.name + SIDECAR_SUFFIX)).read_text())["sha256"] == third.files[1].sha256


def test_changed_input_rebuilds_everything(tiny_llama, tmp_path, caplog):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    out = tmp_path / "out"
    convert_to_gguf(model, out, ["Q8_0"], name="m", fidelity=False)
    gen = json.loads((model / "generation_config.json").read_text())
    gen["max_length"] = 77
    (model / "generation_config.json").write_text(json.dumps(gen))
    with caplog.at_level("INFO", logger="so8t"):
        second = convert_to_gguf(model, out, ["Q8_0"], name="m", fidelity=False)
    assert [f.reused for f in second.files] == [False, False]
    assert "input changed" in caplog.text


def test_dry_run_prints_plan_and_writes_nothing(tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["convert", str(tiny_llama), str(out), "Q4_K_M", "Q8_0", "--name", "m", "--dry-run"])
    text = capsys.readouterr().out
    assert rc == 0 and not out.exists()
    assert re.search(r"convert\s+F16 .* m_f16\.gguf", text) and "m_Q4_K_M.gguf" in text and "m_Q8_0.gguf" in text


def test_failed_conversion_leaves_no_gguf(tiny_llama, tmp_path, capsys):
    model = tmp_path / "broken"
    shutil.copytree(tiny_llama, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["num_attention_heads"] = cfg["hidden_size"] + 1  # passes our cheap checks; the converter fails mid-way
    (model / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    rc = main(["convert", str(model), str(out), "Q8_0", "--name", "m"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("so8t: error: llama.cpp's converter failed"), err[-1]
    assert not out.exists()  # a failed first conversion leaves no directory behind
    out.mkdir()
    (out / "keep.txt").write_text("someone else's file")
    rc = main(["convert", str(model), str(out), "Q8_0", "--name", "m"])
    assert rc == 2
    assert (out / "keep.txt").is_file()  # an existing directory stays, with what was in it
    assert not [p.name for p in out.iterdir() if "gguf" in p.name]  # neither *.gguf nor hidden partials


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"model directory .* does not exist"),
    ("no_config", r"not a Hugging Face model directory \(no config\.json\)"),
    ("bad_quant", r"unknown quantization type 'Q9_Z': llama\.cpp knows .*Q4_K_M.*Q5_K_M"),
    ("phi3_name", r"name 'phi3' contains 'phi3'.*<\|endoftext\|>.*--name"),
    ("unsupported_arch", r"converter failed on .*Model FooForCausalLM is not supported"),
    ("out_under_a_file", r"out_dir .*/afile/out: .*/afile is a file, so the directory cannot be created"),
    ("out_read_only_fs", r"out_dir /sys/so8t-test-out: cannot write there"),
    ("out_inside_model", r"out_dir .*/model-copy/gguf is inside model_dir .*: every conversion would change"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(case, pattern, request, tmp_path, capsys):
    def unsupported():
        import shutil

        d = tmp_path / "foo-model"
        shutil.copytree(request.getfixturevalue("tiny_llama"), d)
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, "architectures": ["FooForCausalLM"]}))
        return d

    if case == "out_read_only_fs" and not Path("/sys").is_dir():
        pytest.skip("no read-only /sys on this machine")
    model = {"missing": lambda: tmp_path / "nope", "no_config": lambda: tmp_path,
             "bad_quant": lambda: request.getfixturevalue("tiny_llama"),
             "phi3_name": lambda: request.getfixturevalue("tiny_phi3"),
             "unsupported_arch": unsupported,
             "out_under_a_file": lambda: request.getfixturevalue("tiny_llama"),
             "out_read_only_fs": lambda: request.getfixturevalue("tiny_llama"),
             "out_inside_model": lambda: shutil.copytree(request.getfixturevalue("tiny_llama"), tmp_path / "model-copy")}[case]()
    out = tmp_path / "out"
    if case == "out_under_a_file":
        (tmp_path / "afile").write_text("not a directory")
        out = tmp_path / "afile" / "out"
    elif case == "out_read_only_fs":
        out = Path("/sys/so8t-test-out")
    elif case == "out_inside_model":
        out = Path(model) / "gguf"
    argv = ["convert", str(model), str(out), "Q9_Z" if case == "bad_quant" else "Q8_0"]
    rc = main(argv + (["--name", "phi3"] if case == "phi3_name" else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("so8t: error: "), err
    assert re.search(pattern, err[-1]), err[-1]
    assert not out.exists()


def test_the_decision_prompt_travels_next_to_the_gguf_files(tiny_llama, tmp_path):
    import shutil

    from so8t.decision import PROMPT_FILE, DecisionPrompt, write_decision_prompt
    from so8t.errors import DataError

    model = tmp_path / "baked"
    shutil.copytree(tiny_llama, model)
    prompt = DecisionPrompt(system="Policy.", user_template="Request: {text}")
    write_decision_prompt(prompt, model)
    res = convert_to_gguf(model, tmp_path / "out", ["Q8_0"], name="withprompt", fidelity=False)
    assert json.loads((tmp_path / "out" / PROMPT_FILE).read_text()) == prompt.model_dump()
    assert res.path("Q8_0").is_file()
    (model / PROMPT_FILE).write_text('{"system": "x"}')  # broken: refused before anything is written
    with pytest.raises(DataError, match=r"decision_prompt.json: field 'user_template': is required"):
        convert_to_gguf(model, tmp_path / "out2", ["Q8_0"], name="withprompt", fidelity=False)
    assert not (tmp_path / "out2").exists()


@pytest.mark.slow
def test_smollm2_q5_k_m_reports_fallbacks_honestly(tmp_path):
    from so8t.base_models import prepare_embedded

    result = convert_to_gguf(prepare_embedded("smollm2"), tmp_path, ["Q5_K_M"], name="smollm2")
    f16, q5 = result.files
    print(json.dumps({f.quant: {"size_MB": round(f.size_bytes / 1e6, 1), "types": f.tensor_types,
                                "fallbacks": f.fallback_count, "llama_cpp_fallbacks": f.llama_cpp_fallbacks,
                                "fidelity": f.fidelity.model_dump()} for f in result.files}, indent=1))
    assert f16.fidelity.mean_kl < 1e-4 and f16.fidelity.top1_agreement >= 0.97 and f16.fidelity.tokenizer_match
    _, two_d = _types(result.path("Q5_K_M"))
    fallbacks = {n: t for n, t in two_d.items() if t not in K_TYPES}
    assert q5.fallback_count == len(fallbacks) > 0  # hidden 576 is not a multiple of 256
    assert set(fallbacks.values()) <= {"Q5_1", "Q8_0"}
    # llama.cpp counts one fewer: it puts the tied token_embd/output in Q8_0 by its output rule
    assert q5.llama_cpp_fallbacks is not None and q5.fallback_count - q5.llama_cpp_fallbacks in (0, 1)
    assert q5.fidelity.mean_kl < 0.5 and q5.fidelity.top1_agreement > 0.6


def test_runbook_shim_calls_so8t_convert(tiny_llama, tmp_path):
    import subprocess

    shim = Path(__file__).resolve().parents[2] / "scripts" / "training" / "convert_and_quantize.sh"
    usage = subprocess.run(["bash", str(shim)], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    out = tmp_path / "out"
    dry = subprocess.run(["bash", str(shim), str(tiny_llama), str(out), "Q5_K_M", "--name", "m", "--dry-run"],
                         capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "m_Q5_K_M.gguf" in dry.stdout and not out.exists()
