"""The decision prompt: default, JSON files, validation errors naming file and field."""

from __future__ import annotations

import json

import pytest

from so8t.decision import (DEFAULT_DECISION_PROMPT, LABELS, PROMPT_FILE, DecisionPrompt, decision_messages,
                           load_decision_prompt, resolve_prompt, write_decision_prompt)
from so8t.errors import DataError


def test_default_prompt_is_the_policy_and_renders_the_text():
    msgs = decision_messages("bake bread?")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "bake bread?" in msgs[1]["content"]
    for label in LABELS:  # every decision is defined in the shared system turn
        assert f"{label}:" in msgs[0]["content"]
    assert msgs == DEFAULT_DECISION_PROMPT.messages("bake bread?")


def test_round_trip_and_digest(tmp_path):
    p = DecisionPrompt(system="Classify.", user_template="R: {text} ->")
    path = write_decision_prompt(p, tmp_path)
    assert path == tmp_path / PROMPT_FILE
    assert load_decision_prompt(path) == p
    assert load_decision_prompt(tmp_path) == p  # a directory holding the file
    assert p.sha256() != DEFAULT_DECISION_PROMPT.sha256()
    assert p.messages("x")[1]["content"] == "R: x ->"
    assert load_decision_prompt(None) == DEFAULT_DECISION_PROMPT


def test_resolve_prompt_prefers_explicit_then_beside_the_model(tmp_path):
    model = tmp_path / "m" / "model_Q8_0.gguf"
    model.parent.mkdir()
    assert resolve_prompt(None, model) == DEFAULT_DECISION_PROMPT
    beside = DecisionPrompt(system="beside", user_template="{text}")
    write_decision_prompt(beside, model.parent)
    assert resolve_prompt(None, model) == beside
    explicit = DecisionPrompt(system="explicit", user_template="{text}")
    write_decision_prompt(explicit, tmp_path)
    assert resolve_prompt(tmp_path / PROMPT_FILE, model) == explicit


@pytest.mark.parametrize("content,match", [
    ('{"system": "s"}', r"field 'user_template': is required"),
    ('{"system": "s", "user_template": "no field"}', r"field 'user_template': must contain the field \{text\} exactly once"),
    ('{"system": "s", "user_template": "{text} {other}"}', r"field 'user_template': must contain the field \{text\}"),
    ('{"system": "s", "user_template": "{text} {text}"}', r"field 'user_template': must contain the field \{text\}"),
    ('{"system": "s", "user_template": "{text"}', r"field 'user_template': is not a valid template"),
    ('{"system": "  ", "user_template": "{text}"}', r"field 'system': must not be empty"),
    ('{"system": 3, "user_template": "{text}"}', r"field 'system': must be a string"),
    ('{"system": "s", "user_template": "{text}", "labels": []}', r"field 'labels': is not a known field"),
    ('["s"]', r"expected a JSON object"),
    ('{"system": "s",\n "user_template": }', r"prompt.json:2: malformed JSON"),
])
def test_bad_prompt_files_name_file_and_field(tmp_path, content, match):
    p = tmp_path / "prompt.json"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match) as e:
        load_decision_prompt(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_missing_prompt_file(tmp_path):
    with pytest.raises(DataError, match="decision prompt file not found"):
        load_decision_prompt(tmp_path / "nope.json")


def test_literal_braces_are_allowed():
    p = DecisionPrompt(system="s", user_template='{{"request": "{text}"}}')
    assert p.messages("x")[1]["content"] == '{"request": "x"}'
    json.dumps(p.model_dump())
