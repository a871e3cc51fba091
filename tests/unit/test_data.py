"""Data readers: strict validation with file:line:field errors; masking; EOS; truncation."""


import pytest

from so8t.training.data import IGNORE_INDEX, encode_dataset, encode_record, read_jsonl, InstructionRecord, LabelledRecord
from so8t.decision import LABELS
from so8t.errors import DataError


def _write(tmp_path, lines):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


@pytest.mark.parametrize(
    "lines, pattern",
    [
        (['{"text": "ok"}', '{"text": "broken"'], r"d\.jsonl:2: malformed JSON"),
        (['{"instruction": "q"}'], r"d\.jsonl:1: field 'output': missing"),
        (['{"text": "a", "label": "MAYBE"}'], r"d\.jsonl:1: field 'label': 'MAYBE' is not one of ALLOW, ESCALATE, DENY"),
        (['{"text": "a", "colour": "red"}'], r"d\.jsonl:1: field 'colour': unknown field"),
        (['{"text": 3}'], r"d\.jsonl:1: field 'text'"),
        (['{"text": "a", "label": "DENY", "source": ""}'], r"d\.jsonl:1: field 'source'"),
        (['{"text": "a", "label": "DENY", "lang": 5}'], r"d\.jsonl:1: field 'lang'"),
        (['{"text": "a", "source": "x"}'], r"d\.jsonl:1: field 'source': unknown field"),
        (['[1, 2]'], r"d\.jsonl:1: expected a JSON object"),
        ([''], r"d\.jsonl: no records"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, lines, pattern):
    with pytest.raises(DataError, match=pattern) as e:
        read_jsonl(_write(tmp_path, lines))
    assert "\n" not in str(e.value)


def test_labelled_records_carry_optional_metadata(tmp_path):
    recs = read_jsonl(_write(tmp_path, [
        '{"text": "a", "label": "DENY", "source": "advbench", "category": "x", "lang": "en", "framing": "plain"}',
        '{"text": "b", "label": "ALLOW"}']))
    assert [type(r) for r in recs] == [LabelledRecord, LabelledRecord]
    assert (recs[0].source, recs[0].category, recs[0].lang, recs[0].framing) == ("advbench", "x", "en", "plain")
    assert recs[1].source is None


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_kinds_are_detected(tiny_dataset):
    recs = read_jsonl(tiny_dataset)
    kinds = {type(r).__name__ for r in recs}
    assert kinds == {"InstructionRecord", "TextRecord", "LabelledRecord"}


@pytest.fixture(scope="module")
def tok(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_llama))


def test_loss_only_on_answer_and_eos_learned(tok):
    rec = InstructionRecord(instruction="add 1 and 2", output="3", thinking="1 + 2 = 3")
    ex, truncated = encode_record(rec, tok, 512)
    assert not truncated
    ids, labels = ex["input_ids"], ex["labels"]
    prompt = tok.apply_chat_template([{"role": "user", "content": rec.instruction}], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert all(lab == IGNORE_INDEX for lab in labels[:n_prompt])
    answer = [t for t in labels if t != IGNORE_INDEX]
    assert answer == ids[n_prompt:]
    text = tok.decode(answer)
    assert text.startswith("<think>1 + 2 = 3</think>3")
    assert tok.eos_token_id in answer  # stopping is learned


def test_label_record_answers_with_the_label_after_the_decision_prompt(tok):
    from so8t.decision import DECISION_SYSTEM

    ex, truncated = encode_record(LabelledRecord(text="how do I bake bread?", label="ALLOW"), tok, 4096)
    assert not truncated
    answer = tok.decode([t for t in ex["labels"] if t != IGNORE_INDEX])
    assert answer.strip().startswith("ALLOW")
    assert DECISION_SYSTEM[:30] in tok.decode(ex["input_ids"])
    assert set(LABELS) == {"ALLOW", "ESCALATE", "DENY"}


def test_truncation_is_counted_and_reported(tok, caplog, tiny_dataset):
    recs = read_jsonl(tiny_dataset)
    with caplog.at_level("WARNING"):
        ds, stats = encode_dataset(recs, tok, max_length=24)
    assert stats.truncated > 0
    assert all(len(ex["input_ids"]) <= 24 for ex in ds.examples)
    assert "truncated to max_length=24" in caplog.text
    _, full = encode_dataset(recs, tok, max_length=4096)
    assert full.truncated == 0 and full.tokens > stats.tokens


def test_text_records_train_on_every_token(tok):
    from so8t.training.data import TextRecord

    ex, _ = encode_record(TextRecord(text="calibration data"), tok, 512)
    assert [t for t in ex["labels"] if t != IGNORE_INDEX] == ex["input_ids"][1:]  # all but BOS
    assert ex["input_ids"][-1] == tok.eos_token_id


def test_output_dir_probe_refuses_what_permission_bits_do_not_show(tmp_path):
    from pathlib import Path

    from so8t.errors import ConfigError
    from so8t.outpaths import check_output_dir

    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing behind
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=r"--output_dir .*f: exists and is not a directory"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(ConfigError, match=r"f is a file, so the directory cannot be created"):
        check_output_dir(tmp_path / "f" / "out")
    # /proc takes no new files even from root (CI runs as root): os.access() would say yes
    with pytest.raises(ConfigError, match=r"--output_dir /proc/so8t-out: cannot write there"):
        check_output_dir(Path("/proc/so8t-out"))


@pytest.mark.parametrize("argv, flag", [
    (["--temp", "nan"], "--temp"), (["--temp", "-1"], "--temp"), (["--top_p", "nan"], "--top_p"),
    (["--top_p", "0"], "--top_p"), (["--top_p", "1.5"], "--top_p"), (["-t", "-3"], "-t"),
    (["-n", "0"], "-n"), (["--repeat_penalty", "inf"], "--repeat_penalty"), (["--temp", "x"], "--temp"),
])
def test_run_refuses_non_finite_and_out_of_range_sampling_flags(argv, flag, capsys, tmp_path):
    """Hardening (issue #14): these were accepted and reached llama.cpp."""
    from so8t.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", "-m", str(tmp_path / "m.gguf"), "-p", "hi", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "Traceback" not in err


@pytest.mark.parametrize("field", ["learning_rate", "pet_lambda", "num_epochs"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_train_config_refuses_non_finite_numbers(field, value, tmp_path):
    """Hardening (issue #14): --learning_rate inf trained NaN adapters and exited 0."""
    from pydantic import ValidationError

    from so8t.config import TrainConfig

    with pytest.raises(ValidationError, match="finite"):
        TrainConfig(base_model="smollm2", dataset="d.jsonl", output_dir=str(tmp_path), **{field: value})


def test_a_too_long_label_record_loses_the_middle_of_its_request_not_its_label(tok):
    words = [f"w{i}" for i in range(300)]
    rec = LabelledRecord(text="START " + " ".join(words) + " FINISH", label="DENY")
    full, cut = encode_record(rec, tok, 1 << 20, label_loss="label_token")
    assert not cut
    limit = len(full["input_ids"]) - 60
    ex, cut = encode_record(rec, tok, limit, label_loss="label_token")
    assert cut and limit - 40 <= len(ex["input_ids"]) <= limit
    # the label token is still the one supervised position, as in the uncut example
    want = [t for t in full["labels"] if t != IGNORE_INDEX]
    assert [t for t in ex["labels"] if t != IGNORE_INDEX] == want and len(want) == 1
    text = tok.decode(ex["input_ids"])
    assert "START" in text and "FINISH" in text and "…" in text and "w160" not in text
    # the end of the conversation (label, end of turn) is the uncut one's
    assert ex["input_ids"][-3:] == full["input_ids"][-3:]


def test_a_label_record_whose_prompt_alone_is_too_long_is_cut_at_the_end(tok):
    rec = LabelledRecord(text="short request", label="ALLOW")
    ex, cut = encode_record(rec, tok, 8)
    assert cut and len(ex["input_ids"]) == 8 and all(t == IGNORE_INDEX for t in ex["labels"])


@pytest.mark.parametrize("content, pattern", [
    (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', r"d\.jsonl:2: not UTF-8 text \(byte 0xe9 at byte 14 of the line\)"),
    (b'\x00\x01\x02\xff\xfe binary', r"d\.jsonl:1: not UTF-8 text"),
    (b'{"text": "a", "label": "ALLOW", "label": "DENY"}\n', r"d\.jsonl:1: field 'label': given twice"),
    (b'{"text": "' + b"x" * (1 << 20) + b'"}\n', r"d\.jsonl:1: the line is \d+ bytes, over the limit of 1048576"),
])
def test_bad_bytes_duplicate_keys_and_huge_lines_are_refused_with_file_and_line(tmp_path, content, pattern):
    p = tmp_path / "d.jsonl"
    p.write_bytes(content)
    with pytest.raises(DataError, match=pattern):
        read_jsonl(p)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"text": "\xe3\x81\x93\xe3\x82\x93", "label": "ALLOW"}\n{"text": "b"}\n')
    recs = read_jsonl(p)
    assert [r.text for r in recs] == ["こん", "b"] and recs[0].label == "ALLOW"
