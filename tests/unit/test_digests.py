"""The one directory hash (so8t.digests) against hashlib over a hand-built listing, and its users."""

from __future__ import annotations

import hashlib
from pathlib import Path

from so8t.digests import digest_files, directory_digest, sha256_file, visible_files


def _tree(root: Path) -> None:
    for rel, data in {"config.json": b"{}", "b/weights.bin": b"\x00\x01" * 5000, "b/a.txt": "ü".encode(),
                      ".lock": b"x", ".git/HEAD": b"ref", "b/.cache/record": b"y", "z": b""}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def test_directory_digest_is_sha256_over_sorted_visible_files(tmp_path):
    _tree(tmp_path)
    listing = b""
    for rel, data in [("b/a.txt", "ü".encode()), ("b/weights.bin", b"\x00\x01" * 5000), ("config.json", b"{}"), ("z", b"")]:
        listing += rel.encode() + b"\x00" + hashlib.sha256(data).hexdigest().encode() + b"\n"
    assert directory_digest(tmp_path) == hashlib.sha256(listing).hexdigest()
    assert [p.relative_to(tmp_path).as_posix() for p in visible_files(tmp_path)] == ["b/a.txt", "b/weights.bin",
                                                                                      "config.json", "z"]


def test_what_changes_the_digest(tmp_path):
    _tree(tmp_path)
    d0 = directory_digest(tmp_path)
    (tmp_path / ".lock").write_bytes(b"other")  # hidden: not content
    (tmp_path / "b" / ".cache" / "new").write_bytes(b"x")
    assert directory_digest(tmp_path) == d0
    (tmp_path / "z").rename(tmp_path / "y")  # a rename is a change
    assert directory_digest(tmp_path) != d0
    (tmp_path / "y").rename(tmp_path / "z")
    assert directory_digest(tmp_path) == d0
    (tmp_path / "z").write_bytes(b"!")
    assert directory_digest(tmp_path) != d0


def test_digest_files_keeps_the_given_order_and_digest(tmp_path):
    _tree(tmp_path)
    a, c = tmp_path / "b" / "a.txt", tmp_path / "config.json"
    assert digest_files(tmp_path, [c, a]) != digest_files(tmp_path, [a, c])
    fake = digest_files(tmp_path, [a], file_digest=lambda p: "f" * 64)
    assert fake == hashlib.sha256(b"b/a.txt\x00" + b"f" * 64 + b"\n").hexdigest()
    assert sha256_file(a, chunk=1) == hashlib.sha256("ü".encode()).hexdigest()


def test_the_users_share_it(tmp_path):
    """GGUF provenance (hash_model_dir) and Prefect's cache key (path_digest) hash directories the same way."""
    from so8t import base_models
    from so8t.export.converter import hash_model_dir
    from so8t.digests import file_digest, path_digest

    _tree(tmp_path)
    assert hash_model_dir(tmp_path) == directory_digest(tmp_path)
    assert path_digest(tmp_path) == "dir:" + directory_digest(tmp_path)
    assert file_digest(tmp_path / "config.json") == sha256_file(tmp_path / "config.json")
    assert base_models.sha256_file is sha256_file  # the name callers import from base_models
