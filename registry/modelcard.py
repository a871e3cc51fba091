"""Model cards (README.md with YAML metadata) and registry metadata for the Hub mirror.

The Hub reads the YAML block at the top of README.md: ``license``, ``base_model``, ``tags`` and
``pipeline_tag`` are standard keys; ``so8t`` carries the method, version and metrics. A plain
download of the repository's ``main`` therefore tells a user what the production model is.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from registry.models import ArtifactKind, HistoryEntry, VersionManifest

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

REGISTRY_FILE = "so8t-registry.json"
"""Registry metadata stored beside the model files on every mirrored revision."""

RESERVED_PATHS = frozenset({REGISTRY_FILE, ".gitattributes"})
"""Paths the mirror writes itself; a version containing one of them cannot be mirrored."""


def render_card(
    m: VersionManifest, *, license: str, aliases: dict[str, str], role: str
) -> str:
    """Render README.md for a version.

    Args:
        m: The version's manifest.
        license: SPDX-like licence id for the metadata (e.g. ``apache-2.0``).
        aliases: Current aliases of the model (shown in the card).
        role: ``"production"`` for main, ``"version"`` for a v{N} tag.

    Returns:
        The card text, YAML front matter first.
    """
    method = str(m.parameters.get("method", "SO8T"))
    lic = str(m.parameters.get("license", license))
    meta: dict[str, Any] = {"license": lic}
    if m.lineage.base_model and _HUB_ID.match(m.lineage.base_model):
        meta["base_model"] = m.lineage.base_model
    kinds = sorted({f.kind.value for f in m.files})
    meta["tags"] = ["so8t", *(k for k in kinds if k in ("gguf", "adapter"))]
    meta["pipeline_tag"] = "text-generation"
    meta["so8t"] = {
        "model": m.name,
        "version": m.version,
        "method": method,
        "metrics": dict(m.metrics),
        "created_at": m.created_at.isoformat(),
    }
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    title = f"{m.name} {m.version}" + (" (production)" if role == "production" else "")
    lines = [f"---\n{front}---", "", f"# {title}", ""]
    if m.description:
        lines += [m.description, ""]
    lines += [f"Method: {method}. Base model: {m.lineage.base_model or 'n/a'}.", ""]
    if m.metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" for k, v in sorted(m.metrics.items())]
        lines.append("")
    lines += ["| file | kind | bytes | sha256 |", "|---|---|---|---|"]
    lines += [f"| `{f.path}` | {f.kind.value} | {f.size} | `{f.sha256[:12]}` |" for f in m.files]
    lines.append("")
    gguf = [f.path for f in m.files if f.kind == ArtifactKind.GGUF]
    modelfile = [f.path for f in m.files if f.kind == ArtifactKind.MODELFILE]
    if gguf:
        lines += ["## Run it", "", "```", f"llama-cli -m {gguf[0]} -p 'Hello'"]
        if modelfile:
            lines.append(f"ollama create {m.name} -f {modelfile[0]}")
        lines += ["```", ""]
    if aliases:
        lines += ["Aliases: " + ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items())), ""]
    lines += [f"Every version is tagged `vN`; `main` follows production. Registry metadata: "
              f"`{REGISTRY_FILE}`.", ""]
    return "\n".join(lines)


def render_empty_card(name: str, *, license: str) -> str:
    """README.md for main while no version is in production."""
    front = yaml.safe_dump({"license": license, "tags": ["so8t"]}, sort_keys=False)
    return (f"---\n{front}---\n\n# {name}\n\nNo version is in production yet; see the `vN` tags.\n")


def registry_json(
    m: VersionManifest | None,
    *,
    name: str,
    aliases: dict[str, str],
    states: dict[str, str],
    seq: int,
    change: HistoryEntry | None,
) -> bytes:
    """Content of :data:`REGISTRY_FILE`: manifest of the files present plus alias state."""
    doc = {
        "model": name,
        "seq": seq,
        "aliases": dict(sorted(aliases.items())),
        "states": dict(sorted(states.items())),
        "manifest": json.loads(m.model_dump_json()) if m is not None else None,
        "change": json.loads(change.model_dump_json()) if change is not None else None,
    }
    return (json.dumps(doc, indent=1, sort_keys=False) + "\n").encode()
