"""Shared fixtures: tiny models built once per session from configs, small JSONL datasets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import settings

from tests.fixtures.required import in_ci

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("SO8T_LOG_DIR", str(REPO / "logs" / "tests"))

# The tests' own direct llama_cpp.Llama(...) oracles load models under the library's policy too (no extra
# buffer types: llama.cpp's AMX path crashes on AMX CPUs; so8t/llama.py).
try:
    from so8t.llama import configure_llama_cpp

    configure_llama_cpp()
except ImportError:  # llama-cpp-python not installed: the tests that need it say so
    pass

# CI runs the same examples every time (a failure there is reproducible, never a roll of the dice);
# developers keep Hypothesis's random exploration and its example database.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if in_ci():
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _seeded_rngs():
    """Every test starts from the same torch / numpy / random state, whatever ran before it."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def sp_model(tiny_root) -> Path:
    from tests.fixtures.tiny_models import build_tokenizer_model

    return build_tokenizer_model(tiny_root / "sp")


@pytest.fixture(scope="session")
def tiny_llama(tiny_root, sp_model) -> Path:
    from tests.fixtures.tiny_models import build_tiny_llama

    return build_tiny_llama(tiny_root / "llama", sp_model)


@pytest.fixture(scope="session")
def tiny_phi3(tiny_root, sp_model) -> Path:
    from tests.fixtures.tiny_models import build_tiny_phi3

    return build_tiny_phi3(tiny_root / "phi3", sp_model)


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_root) -> Path:
    from tests.fixtures.tiny_models import build_tiny_gpt2

    return build_tiny_gpt2(tiny_root / "gpt2")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture()
def tiny_dataset(tmp_path) -> Path:
    """A few records of every kind (instruction with/without thinking, text, labelled)."""
    recs = []
    for i in range(6):
        recs.append({"instruction": f"add {i} and {i + 1}", "output": f"{2 * i + 1}", "thinking": f"{i} + {i + 1} = {2 * i + 1}"})
        recs.append({"instruction": f"repeat the word gate {i}", "output": "gate " * (i % 3 + 1)})
        recs.append({"text": f"calibration of the model {i} needs labelled data"})
        recs.append({"text": f"please review request {i}", "label": ["ALLOW", "ESCALATE", "DENY"][i % 3]})
    return write_jsonl(tmp_path / "train.jsonl", recs)
