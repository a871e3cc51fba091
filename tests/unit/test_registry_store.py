"""Unit tests of the local registry store (real files in tmp dirs, no mocks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from registry import (
    ArtifactKind,
    IntegrityError,
    InvalidInputError,
    InvalidNameError,
    NotFoundError,
    Registry,
    StateError,
    VersionState,
)
from registry.cli import main as cli_main
from registry.fsio import read_last_line

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "store")


def _files(tag: str) -> dict[str, bytes]:
    return {"model.gguf": f"gguf-{tag}".encode() * 100, "Modelfile": b"FROM ./model.gguf\n",
            "calibration.json": json.dumps({"t": tag}).encode()}


def test_publish_numbers_versions_and_infers_kinds(reg: Registry, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "hf").mkdir(parents=True)
    (src / "hf" / "model.safetensors").write_bytes(b"w" * 10)
    (src / "hf" / "config.json").write_text("{}")
    (src / "adapter_model.safetensors").write_bytes(b"a")
    (src / "model.Q4_K_M.gguf").write_bytes(b"g" * 5)
    m1 = reg.publish("so8t-x", src, metrics={"acc": 0.5}, parameters={"lr": 1e-4},
                     lineage={"base_model": "org/base", "dataset_hashes": {"d": "0" * 64},
                              "code_revision": "abc"}, flow_run_id="run-1")
    m2 = reg.publish("so8t-x", _files("b"), kinds={"calibration.json": "report"})
    assert (m1.version, m2.version) == ("v1", "v2")
    kinds = {f.path: f.kind for f in m1.files}
    assert kinds == {"adapter_model.safetensors": ArtifactKind.ADAPTER, "hf/config.json": ArtifactKind.CONFIG,
                     "hf/model.safetensors": ArtifactKind.HF_MODEL, "model.Q4_K_M.gguf": ArtifactKind.GGUF}
    assert m2.file("calibration.json").kind == ArtifactKind.REPORT
    assert m2.file("Modelfile").kind == ArtifactKind.MODELFILE
    got = reg.get("so8t-x", "v1")
    assert got.manifest == m1 and got.verified and got.state == VersionState.CANDIDATE
    assert got.path("hf/model.safetensors").read_bytes() == b"w" * 10
    assert reg.manifest("so8t-x", "1").flow_run_id == "run-1"
    assert [v.version for v in reg.list_versions("so8t-x")] == ["v1", "v2"]
    assert reg.list_models() == ["so8t-x"]


def test_blobs_are_deduplicated_and_read_only(reg: Registry) -> None:
    reg.publish("m", _files("same"))
    reg.publish("m", _files("same"))
    reg.publish("other", _files("same"))
    blobs = list(reg.blobs.iter_blobs())
    assert len(blobs) == 3
    for digest in blobs:
        assert reg.blobs.path(digest).stat().st_mode & 0o222 == 0


def test_promote_reject_rollback_states_and_history(reg: Registry) -> None:
    for t in "abc":
        reg.publish("m", _files(t))
    e = reg.promote("m", "v1", evidence={"ece": 0.03, "gate": "pass"}, reason="gate passed")
    assert e is not None and e.evidence == {"ece": 0.03, "gate": "pass"}
    assert reg.promote("m", "v1") is None  # idempotent
    reg.promote("m", "v2", "candidate")
    reg.promote("m", "candidate")  # alias as ref: candidate -> production
    st = reg.state("m")
    assert st.aliases == {"production": "v2", "candidate": "v2"}
    assert st.state_of("v1") == VersionState.ARCHIVED and st.state_of("v2") == VersionState.PRODUCTION
    with pytest.raises(StateError, match="production"):
        reg.reject("m", "v2")
    reg.promote("m", "v3", "candidate")
    rej = reg.reject("m", "v3", reason="ece too high", evidence={"ece": 0.2})
    assert [(x.alias, x.from_version, x.to_version) for x in rej] == [("candidate", "v3", None)]
    with pytest.raises(StateError, match="rejected"):
        reg.promote("m", "v3")
    assert reg.promote("m", "v3", "staging", force=True) is not None
    back = reg.rollback("m", reason="regression")
    assert (back.from_version, back.to_version) == ("v2", "v1")
    assert reg.get("m").version == "v1"
    with pytest.raises(StateError, match="no earlier version"):
        reg.rollback("m")
    assert reg.rollback("m", to="v2").to_version == "v2"
    assert reg.rollback("m").to_version == "v1"  # undo of the explicit rollback
    hist = reg.history("m")
    assert [h.seq for h in hist] == list(range(1, len(hist) + 1))
    assert [h.action for h in reg.history("m", "production")] == ["promote", "promote", "rollback", "rollback", "rollback"]
    assert reg.verify().ok


def test_rollback_skips_versions_rejected_since(reg: Registry) -> None:
    for t in "abc":
        reg.publish("m", _files(t))
    reg.promote("m", "v1")
    reg.promote("m", "v2")
    reg.promote("m", "v3")
    reg.reject("m", "v2", reason="found bad later")
    assert reg.rollback("m").to_version == "v1"


def test_corrupted_blob_is_reported_and_refused(reg: Registry, tmp_path: Path) -> None:
    m = reg.publish("m", _files("a"))
    reg.promote("m", "v1")
    blob = reg.blobs.path(m.file("model.gguf").sha256)
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF
    blob.write_bytes(bytes(data))
    report = reg.verify()
    assert not report.ok and any(m.file("model.gguf").sha256 in p for p in report.problems)
    with pytest.raises(IntegrityError, match="corrupted"):
        reg.get("m", "production")
    with pytest.raises(IntegrityError):
        reg.export("m", "v1", tmp_path / "out")
    assert reg.get("m", "v1", verify=False).version == "v1"  # explicit opt-out still resolves
    blob.unlink()
    with pytest.raises(NotFoundError, match="missing"):
        reg.get("m", "v1")
    assert cli_main(["--root", str(reg.root), "verify"]) == 1


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../x", "a\x00b", "", "a//b", "./a", "C:/x", "a\\b"])
def test_paths_escaping_the_store_are_refused(reg: Registry, bad: str) -> None:
    with pytest.raises(InvalidNameError, match="file path"):
        reg.publish("m", {bad: b"x"})
    assert not (reg.root / "models" / "m" / "versions").exists() or not list((reg.root / "models" / "m" / "versions").iterdir())


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/b", "..", ".", "", "x\x00", "-x", "a" * 101])
def test_model_names_escaping_the_store_are_refused(reg: Registry, bad: str) -> None:
    with pytest.raises(InvalidNameError, match="model name"):
        reg.publish(bad, {"f": b"x"})
    with pytest.raises(InvalidNameError):
        reg.get(bad, "v1")


@pytest.mark.parametrize("bad", ["../x", "v3", "Prod", "", "a/b", "a\x00"])
def test_bad_aliases_are_refused(reg: Registry, bad: str) -> None:
    reg.publish("m", _files("a"))
    with pytest.raises(InvalidNameError):
        reg.promote("m", "v1", bad)


def test_bad_inputs_give_clear_errors(reg: Registry, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no files"):
        (tmp_path / "empty").mkdir()
        reg.publish("m", tmp_path / "empty")
    with pytest.raises(InvalidInputError, match="unknown"):
        reg.publish("m", {"a": b"x"}, kinds={"a": "weights"})
    with pytest.raises(InvalidInputError, match="not in the source"):
        reg.publish("m", {"a": b"x"}, kinds={"b": "gguf"})
    reg.publish("m", {"a": b"x"})
    with pytest.raises(InvalidInputError, match="JSON"):
        reg.promote("m", "v1", evidence={"x": object()})
    assert reg.history("m") == []
    with pytest.raises(NotFoundError, match="alias 'production'"):
        reg.get("m")
    with pytest.raises(NotFoundError, match="v7"):
        reg.get("m", "v7")


def test_evidence_and_metrics_that_could_not_be_read_back_are_refused(reg: Registry, capsys) -> None:
    """Deep nesting (once made state.json unreadable for every command), NaN, oversize: refused on
    the way in, and the model stays fully usable."""
    reg.publish("m", {"a": b"x"})
    deep: dict = {}
    node = deep
    for _ in range(250):
        node["k"] = {}
        node = node["k"]
    with pytest.raises(InvalidInputError, match="nested deeper than 32 levels"):
        reg.promote("m", "v1", evidence=deep)
    with pytest.raises(InvalidInputError, match=r"evidence\.ece: nan is not finite"):
        reg.promote("m", "v1", evidence={"ece": float("nan")})
    with pytest.raises(InvalidInputError, match="over the 1000000 limit"):
        reg.reject("m", "v1", evidence={"blob": "x" * 1_000_001})
    with pytest.raises(InvalidInputError, match=r"metrics\.far: inf is not finite"):
        reg.publish("m", {"b": b"y"}, metrics={"far": float("inf")})
    root = str(reg.root)
    assert cli_main(["--root", root, "promote", "m", "v1", "--evidence", json.dumps(deep)]) == 2
    assert cli_main(["--root", root, "promote", "m", "v1", "--evidence", '{"ece": NaN}']) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("so8t registry: error:")]
    assert len(errors) == 2 and "nested deeper" in errors[0] and "not finite" in errors[1], err
    assert reg.history("m") == [] and [v.version for v in reg.list_versions("m")] == ["v1"]
    reg.promote("m", "v1", evidence={"ece": 0.03, "nested": {"ok": [1, 2, {"fine": None}]}})
    assert reg.get("m").version == "v1" and reg.verify().ok


def test_paths_the_hub_mirror_writes_are_kept_out_of_versions(reg: Registry, tmp_path: Path) -> None:
    """Such a version was published, then blocked the mirror forever."""
    with pytest.raises(InvalidInputError, match=r"may not contain \.gitattributes.*Hub mirror"):
        reg.publish("m", {"model.gguf": b"x", ".gitattributes": b"*.gguf filter=lfs"})
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "model.safetensors").write_bytes(b"w" * 64)
    (hf / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    v = reg.publish("m", hf)  # a Hugging Face checkout: its git metadata is not model content
    assert [f.path for f in reg.manifest("m", v.version).files] == ["model.safetensors"]
    (hf / "so8t-registry.json").write_text("{}")
    with pytest.raises(InvalidInputError, match="so8t-registry.json"):
        reg.publish("m", hf)
    assert [x.version for x in reg.list_versions("m")] == [v.version]


def test_gc_removes_only_unreferenced(reg: Registry) -> None:
    m = reg.publish("m", _files("a"))
    orphan, _ = reg.blobs.put_bytes(b"orphan")
    (reg.blobs.tmp_dir / "blob-stale").write_bytes(b"partial")
    (reg.blobs.tmp_dir / "tmp-live-state").write_bytes(b"{}")  # a concurrent alias change's temp
    dry = reg.gc(dry_run=True)
    assert dry.removed_blobs == (orphan,) and reg.blobs.exists(orphan)
    r = reg.gc()
    assert r.removed_blobs == (orphan,) and r.removed_tmp == 1 and not reg.blobs.exists(orphan)
    assert (reg.blobs.tmp_dir / "tmp-live-state").exists()
    assert all(reg.blobs.exists(f.sha256) for f in m.files)
    assert reg.verify().ok


def test_rollback_of_an_unknown_model_is_an_error_that_writes_nothing(reg: Registry) -> None:
    reg.publish("m", {"a": b"x"})
    before = sorted(p.relative_to(reg.root) for p in reg.root.rglob("*"))
    with pytest.raises(NotFoundError, match="'nosuch' has no versions"):
        reg.rollback("nosuch")
    assert cli_main(["--root", str(reg.root), "rollback", "nosuch"]) == 2
    assert sorted(p.relative_to(reg.root) for p in reg.root.rglob("*")) == before  # no lock directory


def test_gc_leaves_stray_files_alone_and_still_collects(reg: Registry, caplog) -> None:
    """A stray file under blobs/ made gc exit 2 (it was taken for a blob with a bad name)."""
    reg.publish("m", _files("a"))
    orphan, _ = reg.blobs.put_bytes(b"orphan")
    stray = reg.blobs.dir / orphan[:2] / "notes.txt"
    stray.write_text("mine")
    top = reg.blobs.dir / "README"
    top.write_text("also mine")
    with caplog.at_level("WARNING", logger="registry"):
        r = reg.gc()
    assert r.removed_blobs == (orphan,) and stray.exists() and top.exists()
    assert "2 entries" in caplog.text and "left alone" in caplog.text
    assert cli_main(["--root", str(reg.root), "gc"]) == 0


def test_export_copies_or_links(reg: Registry, tmp_path: Path) -> None:
    reg.publish("m", {"gguf/model.gguf": b"g" * 3000, "Modelfile": b"FROM ./gguf/model.gguf\n"})
    out = reg.export("m", "v1", tmp_path / "out", with_manifest=True)
    assert (out / "gguf" / "model.gguf").read_bytes() == b"g" * 3000
    assert json.loads((out / "registry-manifest.json").read_text())["version"] == "v1"
    assert os.access(out / "Modelfile", os.W_OK)
    linked = reg.export("m", "v1", tmp_path / "linked", link=True)
    assert (linked / "Modelfile").stat().st_ino == reg.get("m", "v1").path("Modelfile").stat().st_ino
    with pytest.raises(InvalidInputError, match="not an empty directory"):
        reg.export("m", "v1", out)


def test_large_file_copy_and_hash(reg: Registry, tmp_path: Path) -> None:
    big = tmp_path / "big.gguf"
    big.write_bytes(os.urandom(40 << 20) + b"tail")  # > several copy chunks
    m = reg.publish("m", {"big.gguf": big})
    import hashlib

    assert m.files[0].sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
    assert m.files[0].size == (40 << 20) + 4
    assert reg.get("m", "v1").verified


def test_history_recovers_after_crash_between_commit_and_append(reg: Registry) -> None:
    reg.publish("m", _files("a"))
    reg.publish("m", _files("b"))
    reg.promote("m", "v1")
    reg.promote("m", "v2")
    hist = reg.root / "models" / "m" / "history.jsonl"
    data = hist.read_bytes()
    hist.write_bytes(data[: data.rfind(b"\n", 0, len(data) - 1) + 1] + b'{"seq": 2, "tor')  # torn
    assert [e.seq for e in reg.history("m")] == [1, 2]  # readers see the committed tail
    assert reg.verify().ok
    reg.rollback("m")  # writer repairs: drops torn bytes, re-appends seq 2, appends seq 3
    line, _ = read_last_line(hist)
    assert json.loads(line)["seq"] == 3
    assert [json.loads(ln)["seq"] for ln in hist.read_bytes().splitlines()] == [1, 2, 3]
    assert reg.verify().ok


def test_alias_change_does_not_read_other_manifests(reg: Registry) -> None:
    reg.publish("m", _files("a"))
    reg.publish("m", _files("b"))
    vdir = reg.root / "models" / "m" / "versions"
    (vdir / "v50.json").write_text("not json")  # any scan/parse of all versions would fail
    reg.promote("m", "v1")
    reg.promote("m", "v2", "candidate")
    reg.rollback("m", to="v2")
    assert reg.state("m").aliases == {"production": "v2", "candidate": "v2"}
    assert not reg.verify().ok  # ...while verify, which does read everything, notices it


def test_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "store")
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.gguf").write_bytes(b"g" * 100)
    assert cli_main(["publish", "m", str(src), "--root", root, "--metric", "acc=0.9",
                     "--param", "method=\"so8t\"", "--base-model", "org/base"]) == 0
    assert cli_main(["--root", root, "promote", "m", "v1", "--evidence", '{"ece": 0.01}', "--reason", "ok"]) == 0
    capsys.readouterr()
    assert cli_main(["list", "m", "--root", root, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["version"] == "v1" and rows[0]["aliases"] == ["production"]
    assert cli_main(["history", "m", "--root", root]) == 0
    assert "promote" in capsys.readouterr().out
    assert cli_main(["export", "m", "production", str(tmp_path / "out"), "--root", root]) == 0
    assert (tmp_path / "out" / "model.gguf").read_bytes() == b"g" * 100
    for argv in (["promote", "m", "v5"], ["publish", "../x", str(src)], ["rollback", "m"],
                 ["promote", "m", "v1", "--evidence", "[1]"], ["show", "m", "prod/x"]):
        capsys.readouterr()
        assert cli_main([*argv, "--root", root]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) >= 1 and "error" in err[-1]
    assert cli_main(["--help"]) == 0
    assert cli_main(["gc", "--root", root]) == 0 and cli_main(["verify", "--root", root]) == 0


def test_python_m_cli_and_import_without_torch_prefect(tmp_path: Path) -> None:
    blocker = (
        "import sys\n"
        "class B:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'prefect'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, B())\n"
        "import registry, registry.store, registry.cli, registry.hub, registry.checks\n"
        "sys.argv = ['so8t registry', '--root', sys.argv[1], 'list']\n"
        "raise SystemExit(registry.cli.main())\n"
    )
    r = subprocess.run([sys.executable, "-c", blocker, str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "registry.cli", "--root", str(tmp_path), "list"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "no models" in r.stdout


def test_verify_of_a_missing_model_or_root_is_an_error_not_ok(tmp_path):
    """Hardening (issue #14): "OK: 0 versions" for a typo or a wrong root hid the mistake."""
    from registry import Registry
    from registry.cli import main as registry_main
    from registry.errors import NotFoundError

    with pytest.raises(NotFoundError, match="does not exist"):
        Registry(tmp_path / "nowhere").verify()
    reg = Registry(tmp_path / "reg")
    reg.publish("m", {"a.gguf": b"x"})
    assert reg.verify().ok and reg.verify("m").ok
    with pytest.raises(NotFoundError, match="model 'nosuch' not found"):
        reg.verify("nosuch")
    assert registry_main(["--root", str(tmp_path / "reg"), "verify", "nosuch"]) == 2
    assert registry_main(["--root", str(tmp_path / "nowhere"), "verify"]) == 2


def test_unicode_digits_are_not_version_numbers(tmp_path):
    from registry import Registry
    from registry.errors import InvalidNameError, NotFoundError

    reg = Registry(tmp_path / "reg")
    reg.publish("m", {"a.gguf": b"x"})
    assert reg.resolve("m", "1") == "v1"
    for ref in ("\u0661", "\uff11", "\u00b9"):  # Arabic-Indic one, fullwidth one, superscript one
        with pytest.raises((InvalidNameError, NotFoundError)):
            reg.resolve("m", ref)


def test_parents_must_name_existing_versions(reg: Registry, capsys) -> None:
    reg.publish("m", _files("a"))
    reg.publish("other", _files("o"))
    for bad, msg in (("v99", "model 'm' has no version v99"), ("bad name", "is not a version"),
                     ("other:v7", "model 'other' has no version v7"), ("Bad/../x:v1", "is not a model name"),
                     ("v١", "is not a version")):
        with pytest.raises(InvalidInputError, match=msg):
            reg.publish("m", _files("b"), lineage={"parents": (bad,)})
    assert [v.version for v in reg.list_versions("m")] == ["v1"]  # nothing claimed a number
    assert reg.publish("m", _files("c"), lineage={"parents": ("v1", "other:v1")}).lineage.parents == ("v1", "other:v1")
    src = Path(reg.root).parent / "src"
    src.mkdir()
    (src / "f.txt").write_text("x")
    assert cli_main(["--root", str(reg.root), "publish", "m", str(src), "--parent", "v42"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]  # INFO lines may precede it
    assert len(err) == 1 and "parent 'v42'" in err[0]


def test_a_failed_export_leaves_nothing_and_the_retry_is_not_refused(reg: Registry, tmp_path: Path) -> None:
    m = reg.publish("m", _files("a"))
    blob = reg.blobs.path(m.file("calibration.json").sha256)
    good = blob.read_bytes()
    os.chmod(blob, 0o644)
    blob.write_bytes(b"X" + good[1:])  # same size, other content
    dest = tmp_path / "out" / "release"
    with pytest.raises(IntegrityError, match="calibration.json is corrupted"):
        reg.export("m", "v1", dest)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # no partial directory, no staging left
    blob.write_bytes(good)  # repaired: the retry goes through
    reg.export("m", "v1", dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(_files("a"))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InvalidInputError, match="afile is a file"):
        reg.export("m", "v1", tmp_path / "afile" / "x")


@pytest.mark.parametrize("target, damage, where", [
    ("state.json", b"{bad\n", r"state\.json: corrupt ModelState"),
    ("state.json", b'{"aliases": 5}\n', r"state\.json: corrupt ModelState \(field 'aliases'"),
    ("history.jsonl", b'{"seq": "x"}\n', r"history\.jsonl:2: corrupt HistoryEntry"),
    ("versions/v1.json", b"[]", r"versions/v1\.json: corrupt VersionManifest"),
])
def test_corrupt_registry_files_are_named_with_their_line(reg: Registry, capsys, target, damage, where) -> None:
    reg.publish("m", _files("a"))
    reg.promote("m", "v1")
    path = reg.root / "models" / "m" / target
    if target.endswith(".jsonl"):
        with path.open("ab") as f:
            f.write(damage)
    else:
        os.chmod(path, 0o644)
        path.write_bytes(damage)
    cmd = ["history", "m"] if target.endswith(".jsonl") else ["show", "m", "v1"] if "versions" in target else ["list", "m"]
    assert cli_main(["--root", str(reg.root), *cmd]) == 2
    out = capsys.readouterr().err
    err = [ln for ln in out.splitlines() if "error:" in ln]  # INFO lines of the setup may precede it
    assert len(err) == 1 and "Traceback" not in out
    import re

    assert re.search(where, err[0]), err[0]
