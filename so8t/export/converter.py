"""llama.cpp's HF-to-GGUF converter: where it comes from and how it runs.

The installed llama-cpp-python wheel has no converter, so the source distribution of the *same*
version is fetched once (``pip download --no-deps --no-binary :all: llama-cpp-python==V``) and
the converter (``convert_hf_to_gguf.py``, ``conversion/``, ``gguf-py/``) is extracted to
``cache_root()/llama_cpp_src/V/`` under a file lock, so concurrent processes never race and a
killed fetch never leaves a half-extracted cache. A user with a llama.cpp checkout passes
``--llama_cpp_dir`` instead. The converter runs as a subprocess of ``sys.executable`` with
``PYTHONPATH`` pointing at its own ``gguf-py``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from so8t.base_models import cache_dir
from so8t.digests import digest_files, directory_digest, sha256_file
from so8t.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

MARKER = "so8t_source.json"
_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


def llama_cpp_version() -> str:
    """Version of the installed llama-cpp-python.

    Raises:
        ModelError: not installed.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        raise ModelError("llama-cpp-python is not installed: run `pip install -e .[llama]` (or make setup)") from None


def hash_model_dir(model_dir: Path) -> str:
    """sha256 over the relative paths and sha256 of every non-hidden file of a model directory."""
    return directory_digest(model_dir)


@dataclass
class ConverterSource:
    """A directory holding ``convert_hf_to_gguf.py``, ``conversion/`` and ``gguf-py/``."""

    root: Path
    version: str
    origin: str  # "llama-cpp-python sdist" or "llama.cpp checkout"
    _sha: str | None = field(default=None, repr=False)

    @property
    def script(self) -> Path:
        return self.root / "convert_hf_to_gguf.py"

    def sha256(self) -> str:
        """Hash of the converter's Python sources (script, conversion/, gguf-py/gguf/)."""
        if self._sha is None:
            files = [self.script, *sorted((self.root / "conversion").rglob("*.py")),
                     *sorted((self.root / "gguf-py" / "gguf").rglob("*.py"))]
            self._sha = digest_files(self.root, files)
        return self._sha

    def identity(self) -> dict:
        """What the provenance records: version, source hash and a description."""
        return {"description": f"{self.origin} {self.version} ({self.root})", "version": self.version,
                "sha256": self.sha256(), "root": str(self.root)}


def _checkout(llama_cpp_dir: str) -> ConverterSource:
    root = Path(llama_cpp_dir).expanduser().resolve()
    if not (root / "convert_hf_to_gguf.py").is_file() or not (root / "gguf-py").is_dir():
        raise ConfigError(
            f"llama_cpp_dir {llama_cpp_dir!r} has no convert_hf_to_gguf.py and gguf-py/: pass the root of a "
            f"llama.cpp checkout, or leave it out to use the sdist of the installed llama-cpp-python"
        )
    version = "checkout"
    try:
        version = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                                 text=True, timeout=10).stdout.strip() or version
    except (OSError, subprocess.SubprocessError):
        pass
    return ConverterSource(root, version, "llama.cpp checkout")


def _cached_dir(version: str) -> Path:
    return cache_dir("llama_cpp_src") / version


def describe_converter(llama_cpp_dir: str | None) -> dict:
    """The converter's identity without fetching anything (for ``--dry-run``)."""
    if llama_cpp_dir:
        return _checkout(llama_cpp_dir).identity()
    version = llama_cpp_version()
    target = _cached_dir(version)
    if (target / MARKER).is_file():
        return ConverterSource(target, version, "llama-cpp-python sdist").identity()
    return {"description": f"llama-cpp-python sdist {version} (not fetched yet: pip download, once, into {target})",
            "version": version, "sha256": None, "root": str(target)}


def ensure_converter(llama_cpp_dir: str | None = None) -> ConverterSource:
    """The converter to use: a checkout, or the cached sdist of the installed version (fetched once).

    Raises:
        ConfigError: ``llama_cpp_dir`` is not a llama.cpp checkout.
        ModelError: the sdist could not be fetched or lacks the converter.
    """
    if llama_cpp_dir:
        return _checkout(llama_cpp_dir)
    from filelock import FileLock

    version = llama_cpp_version()
    target = _cached_dir(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / MARKER).is_file():
            _fetch_sdist(version, target)
        else:
            logger.debug("llama.cpp converter: cached at %s", target)
    return ConverterSource(target, version, "llama-cpp-python sdist")


def _fetch_sdist(version: str, target: Path) -> None:
    """Download the sdist and extract the converter into ``target`` (called under the lock)."""
    logger.info("fetching llama-cpp-python==%s source distribution for its converter (once per version, ~76 MB)", version)
    work = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               f"llama-cpp-python=={version}", "-d", str(work / "dl")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = sorted((work / "dl").glob("*.tar.gz")) if (work / "dl").is_dir() else []
        if proc.returncode != 0 or not archives:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ModelError(f"could not download the llama-cpp-python=={version} sdist ({last}): check network "
                             f"access to PyPI, or pass --llama_cpp_dir with a llama.cpp checkout")
        archive = archives[0]
        extracted = work / "src"
        with tarfile.open(archive) as tar:
            prefix = None
            members = []
            for m in tar.getmembers():
                parts = m.name.split("/vendor/llama.cpp/", 1)
                if len(parts) == 2 and parts[1].startswith(_MEMBERS) and (m.isfile() or m.isdir()):
                    prefix = parts[0] + "/vendor/llama.cpp/"
                    members.append(m)
            if prefix is None:
                raise ModelError(f"{archive.name}: no vendor/llama.cpp/convert_hf_to_gguf.py inside; pass --llama_cpp_dir")
            tar.extractall(extracted, members=members, filter="data")
        root = extracted / prefix.rstrip("/")
        if not (root / "convert_hf_to_gguf.py").is_file():
            raise ModelError(f"{archive.name}: the converter is missing from the sdist; pass --llama_cpp_dir")
        meta = {"version": version, "sdist": archive.name, "sdist_sha256": sha256_file(archive)}
        (root / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        root.rename(target)
        logger.info("llama.cpp converter cached at %s", target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


_WRITE_RE = re.compile(r"Writing:\s+(\d+)%")


def run_converter(source: ConverterSource, model_dir: Path, out: Path, name: str, *, verbose: bool = False) -> None:
    """Run ``convert_hf_to_gguf.py --outtype f16`` into a temporary file, then rename it to ``out``.

    Raises:
        ModelError: the converter failed (its last error line is quoted); nothing is left at ``out``.
    """
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)
    env["PYTHONPATH"] = os.pathsep.join([str(source.root / "gguf-py"), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, str(source.script), str(model_dir), "--outfile", str(tmp), "--outtype", "f16", "--model-name", name]
    logger.debug("converter command: %s", " ".join(cmd))
    tail: deque[str] = deque(maxlen=60)
    next_pct = 25
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=str(source.root))
    try:
        assert proc.stdout is not None
        buf = b""
        while chunk := proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096):
            if verbose:
                sys.stderr.write(chunk.decode("utf-8", "replace"))
            buf += chunk
            *lines, buf = re.split(rb"[\r\n]", buf)
            for raw in lines:
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                tail.append(line)
                m = _WRITE_RE.search(line)
                if m and not verbose and int(m.group(1)) >= next_pct:
                    logger.info("convert: writing %s%%", m.group(1))
                    next_pct = int(m.group(1)) // 25 * 25 + 25
                elif not m:
                    logger.debug("convert: %s", line)
        rc = proc.wait()
        if rc != 0:
            errors = [ln for ln in tail if re.search(r"error|exception|Traceback", ln, re.I)]
            last = (errors or list(tail) or ["no output"])[-1]
            raise ModelError(f"llama.cpp's converter failed on {model_dir} (exit {rc}): {last[:300]}; "
                             f"check that the directory is a complete, loadable HF checkpoint of a supported architecture")
        if not tmp.is_file():
            raise ModelError(f"llama.cpp's converter wrote no file for {model_dir}; run with --verbose to see its output")
        os.replace(tmp, out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        tmp.unlink(missing_ok=True)
