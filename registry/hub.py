"""Mirror of a registry model on the Hugging Face Hub (or any server speaking its API).

Hub layout for model ``name`` in repo ``config.repo_id``:

* tag ``vN`` (never moved): exactly version N's files, a model card (README.md) and
  ``so8t-registry.json`` (the manifest). Versions are committed to the branch
  ``config.upload_branch`` (tree replaced per version), then the commit is tagged.
* ``main``: the production version's files, its card and ``so8t-registry.json`` with all aliases
  and states. Each local alias/state change (a history entry) becomes one commit on main, made
  with ``parent_commit=`` so a concurrent writer makes it fail instead of being overwritten.

The local store is the source of truth and is never written by :meth:`HubMirror.sync`. What is already on the
Hub is recorded in ``<root>/mirror/<name>/<repo>.json`` (tags uploaded, last history seq mirrored
to main); what is pending is whatever the store has beyond that, so a crash or an outage loses
nothing: :meth:`HubMirror.sync` catches up. Files the Hub already has (same sha256) are not sent
again: unchanged paths are left out of commits, and the LFS batch API skips known objects.

:meth:`HubMirror.pull` goes the other way: one version (``vN``, ``latest`` or an alias as ``main`` records it)
into a local registry that lacks it, every file re-hashed against the tag's manifest before it becomes a blob.

The token comes from ``token=``, ``HF_TOKEN`` or the ``huggingface-cli login`` cache; it is never
stored, logged or put in an exception message. For a server without xet storage set
``HF_HUB_DISABLE_XET=1`` before huggingface_hub is imported.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from registry.errors import IntegrityError, MirrorError, NotFoundError
from registry.fsio import write_atomic
from registry.locks import file_lock
from registry.modelcard import RESERVED_PATHS, REGISTRY_FILE, registry_json, render_card, render_empty_card
from registry.models import PRODUCTION, FileEntry, HistoryEntry, VersionManifest, check_alias, check_model_name, is_version
from registry.store import Registry

logger = logging.getLogger(__name__)

T = TypeVar("T")
_RETRIABLE = {408, 425, 429, 500, 502, 503, 504}
ENV_REPO = "SO8T_HF_REPO"
ENV_ENDPOINT = "SO8T_HF_ENDPOINT"
LATEST = "latest"
"""Pull reference meaning the highest ``vN`` tag on the Hub."""
_SYNC_HINT = "local store unchanged, rerun `so8t registry mirror --sync` when the Hub is reachable"


class MirrorConfig(BaseModel):
    """Where and how to mirror. The token is deliberately not part of it."""

    # an endpoint may hold a secret by mistake: validation errors never echo the input
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    repo_id: str = Field(description="Hub repository, 'owner/name'.", pattern=r"^[\w.-]+/[\w.-]+$")
    endpoint: str | None = Field(
        default=None, description="Hub URL; None uses HF_ENDPOINT or https://huggingface.co."
    )
    private: bool = Field(default=True, description="Create the repository private.")
    upload_branch: str = Field(default="so8t-uploads", description="Branch versions are committed to.")
    license: str = Field(default="apache-2.0", description="Licence id in the model card metadata.")
    max_attempts: int = Field(default=5, ge=1, description="Tries per Hub call before giving up.")
    backoff_s: float = Field(default=1.0, ge=0, description="First retry delay; doubles per try.")
    backoff_max_s: float = Field(default=30.0, ge=0, description="Longest retry delay.")

    @field_validator("endpoint")
    @classmethod
    def _endpoint_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from urllib.parse import urlsplit

        try:
            u = urlsplit(v)
            host = u.hostname
        except ValueError:
            raise ValueError("is not a URL") from None
        if u.scheme not in ("http", "https") or not host:
            raise ValueError("must be an http(s) URL with a host, e.g. https://huggingface.co")
        if u.username is not None or u.password is not None:
            raise ValueError("must not carry credentials (user:token@host): they would be stored and printed; "
                             "give the token through HF_TOKEN instead")
        return v

    @classmethod
    def from_env(cls, repo_id: str | None = None, endpoint: str | None = None, **kw: Any) -> MirrorConfig:
        """Build a config from arguments, falling back to ``SO8T_HF_REPO`` / ``SO8T_HF_ENDPOINT``.

        Raises:
            MirrorError: If no repository id is given anywhere.
        """
        repo = repo_id or os.environ.get(ENV_REPO)
        if not repo:
            raise MirrorError(
                f"no Hub repository configured: pass --repo OWNER/NAME or set {ENV_REPO}"
            )
        try:
            return cls(repo_id=repo, endpoint=endpoint or os.environ.get(ENV_ENDPOINT) or None, **kw)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(x) for x in err["loc"])
            raise MirrorError(f"mirror setting {field} {err['msg'].removeprefix('Value error, ')}") from None


class UnpushableVersion(MirrorError):
    """A version the Hub repository cannot hold as it is (it will never push): skipped, not retried."""


class MirrorState(BaseModel):
    """What the mirror knows is on the Hub (``<root>/mirror/<name>/<repo>.json``)."""

    model_config = ConfigDict(extra="forbid")

    repo_id: str = Field(description="Repository this state describes.")
    endpoint: str = Field(description="Hub URL this state describes.")
    tags: dict[str, str] = Field(default_factory=dict, description="Version -> tagged commit.")
    main_seq: int = Field(default=0, description="Last history seq mirrored to main.")
    main_commit: str | None = Field(default=None, description="Commit of main after that change.")
    last_error: str | None = Field(default=None, description="Error of the last failed sync.")
    skipped: dict[str, str] = Field(default_factory=dict,
                                    description="Version -> why the mirror cannot push it (left out, said at each sync).")
    last_sync: datetime | None = Field(default=None, description="UTC time of the last sync.")


class SyncReport(BaseModel):
    """Outcome of one :meth:`HubMirror.sync`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    repo_id: str = Field(description="Repository synced.")
    uploaded: tuple[str, ...] = Field(default=(), description="Versions uploaded and tagged now.")
    main_commits: tuple[str, ...] = Field(default=(), description="Commits made on main now.")
    pending_versions: tuple[str, ...] = Field(default=(), description="Versions still not on the Hub.")
    skipped_versions: tuple[str, ...] = Field(default=(), description="Versions the mirror cannot push (see the log).")
    pending_changes: int = Field(default=0, description="History entries not yet on main.")
    error: str | None = Field(default=None, description="Why the sync stopped early, if it did.")

    @property
    def ok(self) -> bool:
        """True when everything is mirrored."""
        return self.error is None and not self.pending_versions and not self.pending_changes


class PullReport(BaseModel):
    """Outcome of one :meth:`HubMirror.pull`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    repo_id: str = Field(description="Repository pulled from.")
    name: str = Field(description="Model name.")
    ref: str = Field(description="What was asked for: 'vN', an alias (resolved on the Hub) or 'latest'.")
    version: str = Field(description="The version pulled, now in the local registry.")
    commit: str = Field(description="Hub commit of the version's vN tag.")
    files: int = Field(description="Files in the version.")
    fetched: tuple[str, ...] = Field(default=(), description="Paths downloaded (and verified) by this pull.")
    fetched_bytes: int = Field(default=0, description="Bytes downloaded by this pull.")
    skipped: tuple[str, ...] = Field(default=(), description="Paths whose blob was already in the local store "
                                                             "(re-hashed, not downloaded).")
    skipped_bytes: int = Field(default=0, description="Bytes of those.")
    already_local: bool = Field(default=False, description="The version was already here, identical: nothing done.")


class _Conflict(Exception):
    """The branch moved under a parent_commit compare-and-swap."""


def _pull_ref(ref: str) -> str:
    """``vN``, ``N`` (-> ``vN``), ``latest`` or an alias name.

    Raises:
        InvalidNameError: Anything else.
    """
    if isinstance(ref, str) and re.fullmatch(r"[0-9]+", ref):
        ref = f"v{int(ref)}"
    if ref == LATEST or (isinstance(ref, str) and is_version(ref)):
        return ref
    return check_alias(ref)


def git_blob_sha1(data: bytes) -> str:
    """Git's object id of a regular file with this content."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


class HubMirror:
    """Pushes one registry's models to a Hub repository; one repository per model name."""

    def __init__(self, registry: Registry, config: MirrorConfig, *, token: str | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        """Args:
        registry: The local store (read only).
        config: Repository and retry settings.
        token: Hub token; None uses HF_TOKEN or the login cache.
        sleep: Delay function between retries (tests pass a fast one).
        """
        self.registry = registry
        self.config = config
        self._token = token
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"HubMirror(repo_id={self.config.repo_id!r}, endpoint={self.config.endpoint!r})"

    # ------------------------------------------------------------ bookkeeping
    def _endpoint(self) -> str:
        return (self.config.endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")

    def _state_path(self, name: str) -> Path:
        key = re.sub(r"[^A-Za-z0-9._-]", "_", self.config.repo_id)
        ep = hashlib.sha1(self._endpoint().encode()).hexdigest()[:8]
        return self.registry.root / "mirror" / name / f"{key}-{ep}.json"

    def load_state(self, name: str) -> MirrorState:
        """Read the mirror bookkeeping for ``name`` (empty if never synced)."""
        path = self._state_path(name)
        try:
            return MirrorState.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return MirrorState(repo_id=self.config.repo_id, endpoint=self._endpoint())

    def _save(self, name: str, state: MirrorState) -> None:
        path = self._state_path(name)
        tmp = self.registry.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        write_atomic(path, state.model_dump_json(indent=1).encode(), tmp_dir=tmp)

    def pending(self, name: str) -> tuple[list[str], int]:
        """Versions not yet tagged on the Hub and history entries not yet on main."""
        state = self.load_state(name)
        versions = [v.version for v in self.registry.list_versions(name)
                    if v.version not in state.tags and v.version not in state.skipped]
        changes = sum(1 for e in self.registry.history(name) if e.seq > state.main_seq)
        return versions, changes

    # ----------------------------------------------------------------- errors
    def _redact(self, text: str) -> str:
        secrets = {self._token, os.environ.get("HF_TOKEN")}
        try:
            from huggingface_hub import get_token

            secrets.add(get_token())
        except Exception:  # noqa: BLE001 - no token anywhere is fine
            pass
        for s in secrets:
            if s:
                text = text.replace(s, "<redacted>")
        return text

    def _call(self, what: str, fn: Callable[[], T], *, hint: str = _SYNC_HINT, not_found: str | None = None) -> T:
        """Run one Hub call with retries and exponential backoff on transient failures.

        Args:
            what: The call, for messages.
            fn: The call.
            hint: What the final error tells the user to do.
            not_found: With it, HTTP 404 raises :class:`NotFoundError` with this message.
        """
        from huggingface_hub.errors import HfHubHTTPError

        delay = self.config.backoff_s
        for attempt in range(1, self.config.max_attempts + 1):
            try:
                return fn()
            except HfHubHTTPError as e:
                status = e.response.status_code if e.response is not None else None
                if status == 412 or (status == 409 and "parent" in str(e).lower()):
                    raise _Conflict(what) from None
                if status == 404 and not_found is not None:
                    raise NotFoundError(self._redact(not_found)) from None
                if status not in _RETRIABLE or attempt == self.config.max_attempts:
                    raise MirrorError(self._redact(
                        f"{what} failed on {self._endpoint()} (HTTP {status}) after {attempt} "
                        f"attempt(s): {str(e).splitlines()[0]}; {hint}"
                    )) from None
                reason = f"HTTP {status}"
            except Exception as e:
                unreachable = isinstance(e, (OSError, ConnectionError))
                # httpx transport errors are not OSError subclasses: retried too; anything else is a bug
                if not unreachable and not type(e).__module__.startswith(("httpx", "httpcore", "requests", "urllib3")):
                    raise
                if attempt == self.config.max_attempts:
                    cause = (f"cannot reach {self._endpoint()} ({type(e).__name__})" if unreachable
                             else f"{type(e).__name__} talking to {self._endpoint()}")
                    raise MirrorError(self._redact(
                        f"{what} failed: {cause} after {attempt} attempt(s); {hint}"
                    )) from None
                reason = type(e).__name__
            logger.warning("%s: %s (attempt %d/%d), retrying in %.2f s", what, reason, attempt,
                           self.config.max_attempts, delay)
            self._sleep(delay)
            delay = min(delay * 2, self.config.backoff_max_s)
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------- pull
    def pull(self, name: str, ref: str = PRODUCTION, *, progress: bool = False) -> PullReport:
        """Fill the local registry with one version from the Hub, every file verified against its manifest.

        ``ref`` is ``vN`` (or ``N``), ``latest`` (the highest ``vN`` tag) or an alias, resolved on the Hub
        side: the aliases recorded in ``so8t-registry.json`` on ``main`` (what :meth:`sync` writes). The
        version's manifest is read from ``so8t-registry.json`` at its ``vN`` tag; each file missing from the
        local store is downloaded at that tag, re-hashed, and becomes a blob only if its sha256 and size
        match the manifest; the manifest is linked last (:meth:`registry.store.Registry.adopt`), so an
        outage or a crash leaves nothing visible, and a rerun downloads only the files still missing.

        Only the version is pulled: local aliases, states and history stay as they are (the local
        registry is the truth for its own promotions); the version arrives as a candidate here.

        Args:
            name: Model name (the repository holds this model).
            ref: Version, alias or ``latest``.
            progress: Show a progress bar over the bytes to download (stderr).

        Raises:
            NotFoundError: The repository, the version or the alias does not exist on the Hub.
            IntegrityError: A downloaded file does not match the manifest; nothing is published.
            StateError: The local registry has this version number with different content.
            MirrorError: The Hub failed (after retries) or holds something that is not this model.
        """
        from huggingface_hub import HfApi

        check_model_name(name)
        ref = _pull_ref(ref)
        repo = self.config.repo_id
        hint = f"nothing published; rerun `so8t registry pull {name}@{ref}` to resume (verified files are kept)"
        api = HfApi(endpoint=self._endpoint(), token=self._token)
        version, commit = self._resolve_remote(api, name, ref, hint)
        m = self._remote_manifest(api, name, version, commit, hint)
        base = dict(repo_id=repo, name=name, ref=ref, version=version, commit=commit, files=len(m.files))
        if self.registry.local_copy(m) is not None:
            logger.info("%s %s is already in %s, identical: nothing to pull", name, version, self.registry.root)
            self._record_tag(name, version, commit)
            return PullReport(**base, already_local=True)

        from huggingface_hub import hf_hub_url
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers, tqdm

        todo = sum(f.size for f in {f.sha256: f for f in m.files if not self.registry.blobs.exists(f.sha256)}.values())
        # one bar over every byte to download (the client advances it chunk by chunk); a disabled one without progress
        bar = tqdm(total=todo, unit="B", unit_scale=True, unit_divisor=1024, desc=f"pull {name} {version}",
                   disable=not progress or None)
        headers = build_hf_headers(token=self._token)
        self.registry.blobs.ensure()
        # one download folder per (Hub, model, version), kept when a pull fails: a rerun resumes its partial files
        # (HTTP Range) from there; gc removes it once stale. The version's pull lock keeps a second pull of the same
        # version from writing into the same partial files.
        key = hashlib.sha1(f"{self._endpoint()}/{repo}".encode()).hexdigest()[:8]
        staging = self.registry.blobs.tmp_dir / f"pull-{name}-{version}-{key}"
        finished = [0]

        def fetch(f: FileEntry) -> Path:
            staging.mkdir(exist_ok=True)
            part = staging / f"{f.sha256}.part"
            url = hf_hub_url(repo, f.path, revision=commit, endpoint=self._endpoint())

            def download() -> Path:
                with open(part, "ab") as fh:
                    done = fh.tell()
                    if done > f.size:  # longer than it can be: start over
                        fh.seek(0)
                        fh.truncate()
                        done = 0
                    bar.n = finished[0] + done  # a retry resumes where the last attempt stopped
                    bar.refresh()
                    http_get(url, fh, resume_size=done, headers=headers, displayed_filename=f.path, _tqdm_bar=bar)
                finished[0] += f.size
                return part

            return self._call(f"download {f.path} of {name} {version}", download, hint=hint,
                              not_found=f"{repo}@{version} has no file {f.path}, which its manifest lists: the tag is "
                                        "damaged; nothing published")

        lock = self._state_path(name).parent / f"pull-{version}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            with file_lock(lock, timeout_s=self.registry.lock_timeout_s):
                _linked, fetched = self.registry.adopt(m, fetch)
        except IntegrityError as e:
            shutil.rmtree(staging, ignore_errors=True)  # nothing of a refused download is reused
            raise IntegrityError(f"{repo}@{version}: {e}") from None
        finally:
            bar.close()
        shutil.rmtree(staging, ignore_errors=True)
        self._record_tag(name, version, commit)
        sizes = {f.path: f.size for f in m.files}
        skipped = tuple(p for p in sizes if p not in fetched)
        logger.info("pulled %s %s from %s@%s: %d file(s) downloaded, %d already here", name, version, repo,
                    commit[:8], len(fetched), len(skipped))
        return PullReport(**base, fetched=fetched, fetched_bytes=sum(sizes[p] for p in fetched), skipped=skipped,
                          skipped_bytes=sum(sizes[p] for p in skipped))

    def next_version(self, name: str) -> int:
        """The lowest version number no host has mirrored yet: the Hub's highest ``vN`` tag + 1 (1 for a new repo).

        A registry that publishes through a shared mirror numbers its next version at least this high, so two
        hosts never give one number to two different versions (what remains is a race between two publishes
        before either is mirrored: the second tag is then refused by the Hub and said by ``sync``).

        Raises:
            MirrorError: The Hub cannot be reached after the configured retries.
        """
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self._endpoint(), token=self._token)
        repo = self.config.repo_id
        try:
            refs = self._call("list refs", lambda: api.list_repo_refs(repo), not_found=f"no repository {repo}")
        except NotFoundError:  # nothing mirrored yet
            return 1
        numbers = [int(t.name[1:]) for t in refs.tags if is_version(t.name)]
        return max(numbers, default=0) + 1

    def _resolve_remote(self, api: Any, name: str, ref: str, hint: str) -> tuple[str, str]:
        """(version, tag commit) that ``ref`` names on the Hub."""
        repo = self.config.repo_id
        refs = self._call("list refs", lambda: api.list_repo_refs(repo), hint=hint, not_found=(
            f"no repository {repo} on {self._endpoint()} (HTTP 404): check --repo_id / ${ENV_REPO} and that the "
            "token (HF_TOKEN) may read it"))
        tags = {t.name: t.target_commit for t in refs.tags if is_version(t.name)}
        listed = ", ".join(sorted(tags, key=lambda v: int(v[1:]))) or "none"
        if ref == LATEST:
            if not tags:
                raise NotFoundError(f"{repo} has no version tags (vN) yet: nothing to pull; run "
                                    f"`so8t registry mirror {name} --sync` on the host that built it")
            version = max(tags, key=lambda v: int(v[1:]))
        elif is_version(ref):
            version = ref
        else:
            main = next((b.target_commit for b in refs.branches if b.name == "main"), None)
            doc = self._registry_doc(api, main, "main", hint) if main else {}
            if doc.get("model") not in (None, name):
                raise MirrorError(f"{repo} mirrors model {doc.get('model')!r}, not {name!r}: check --repo_id")
            aliases = doc.get("aliases") if isinstance(doc.get("aliases"), dict) else {}
            version = aliases.get(ref)
            if not isinstance(version, str) or not is_version(version):
                there = ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
                raise NotFoundError(f"alias {ref!r} of {name!r} is not set on {repo} (aliases there: {there}; "
                                    f"versions: {listed}): pull {name}@vN or {name}@{LATEST}")
        if version not in tags:
            raise NotFoundError(f"version {version} of {name!r} is not on {repo} (versions there: {listed})"
                                + (f"; the alias {ref!r} points at it but it was never uploaded (see "
                                   f"`so8t registry mirror {name}` on the host that built it)" if version != ref else ""))
        return version, tags[version]

    def _registry_doc(self, api: Any, revision: str, where: str, hint: str) -> dict[str, Any]:
        """``so8t-registry.json`` at ``revision`` ({} when that revision has none)."""
        repo = self.config.repo_id
        if REGISTRY_FILE not in self._call("list tree", lambda: [
                e.path for e in api.list_repo_tree(repo, revision=revision)], hint=hint):
            return {}
        from huggingface_hub import hf_hub_url
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers, tqdm

        url = hf_hub_url(repo, REGISTRY_FILE, revision=revision, endpoint=self._endpoint())

        def read() -> bytes:
            buf = io.BytesIO()
            http_get(url, buf, headers=build_hf_headers(token=self._token), _tqdm_bar=tqdm(disable=True))
            return buf.getvalue()

        raw = self._call(f"read {REGISTRY_FILE}", read, hint=hint)
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise MirrorError(f"{REGISTRY_FILE} at {repo}@{where} is not valid JSON ({e}); nothing published") from None
        if not isinstance(doc, dict):
            raise MirrorError(f"{REGISTRY_FILE} at {repo}@{where} is not a JSON object; nothing published")
        return doc

    def _remote_manifest(self, api: Any, name: str, version: str, commit: str, hint: str) -> VersionManifest:
        repo = self.config.repo_id
        doc = self._registry_doc(api, commit, version, hint)
        if not doc:
            raise MirrorError(f"{repo}@{version} has no {REGISTRY_FILE}: it was not made by `so8t registry mirror`, "
                              "so its files cannot be verified; nothing published")
        try:
            m = VersionManifest.model_validate(doc.get("manifest"))
        except ValidationError as e:
            err = e.errors()[0]
            raise MirrorError(f"{REGISTRY_FILE} at {repo}@{version}: manifest field "
                              f"{'.'.join(map(str, err['loc'])) or '(root)'} {err['msg']}; nothing published") from None
        if (m.name, m.version) != (name, version):
            raise MirrorError(f"{repo}@{version} holds {m.name} {m.version}, not {name} {version}: check --repo_id; "
                              "nothing published")
        return m

    def _record_tag(self, name: str, version: str, commit: str) -> None:
        """Remember that ``version`` is on the Hub at ``commit`` (a later sync from here skips it)."""
        lock = self._state_path(name).with_suffix(".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(lock, timeout_s=self.registry.lock_timeout_s):
            state = self.load_state(name)
            if state.tags.get(version) != commit:
                state.tags[version] = commit
                self._save(name, state)

    # ------------------------------------------------------------------- sync
    def sync(self, name: str, *, raise_on_error: bool = False) -> SyncReport:
        """Upload missing versions, then replay missing alias changes onto main.

        Never modifies the local store. On failure the progress made so far is kept and the
        error is returned in the report (or raised with ``raise_on_error``).

        Raises:
            MirrorError: Only with ``raise_on_error=True``.
        """
        lock = self._state_path(name).with_suffix(".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        uploaded: list[str] = []
        commits: list[str] = []
        error = None
        with file_lock(lock, timeout_s=self.registry.lock_timeout_s):
            state = self.load_state(name)
            try:
                from huggingface_hub import HfApi

                api = HfApi(endpoint=self._endpoint(), token=self._token)
                repo = self.config.repo_id
                self._call("create repo", lambda: api.create_repo(
                    repo, private=self.config.private, exist_ok=True))
                for summary in self.registry.list_versions(name):
                    if summary.version in state.tags:
                        continue
                    if summary.version in state.skipped:
                        logger.warning("mirror skips %s %s: %s", name, summary.version, state.skipped[summary.version])
                        continue
                    m = self.registry.manifest(name, summary.version)
                    try:
                        state.tags[m.version] = self._upload_version(api, m)
                    except UnpushableVersion as e:  # never retried: later versions must not wait on it
                        state.skipped[m.version] = str(e)
                        logger.warning("mirror skips %s %s: %s", name, m.version, e)
                        self._save(name, state)
                        continue
                    self._save(name, state)
                    uploaded.append(m.version)
                commits = self._sync_main(api, name, state)
                state.last_error = None
            except MirrorError as e:
                error = self._redact(str(e))
                state.last_error = error
                logger.error("mirror of %s to %s stopped: %s", name, self.config.repo_id, error)
            state.last_sync = datetime.now(timezone.utc)
            self._save(name, state)
        versions, changes = self.pending(name)
        report = SyncReport(repo_id=self.config.repo_id, uploaded=tuple(uploaded),
                            main_commits=tuple(commits), pending_versions=tuple(versions),
                            pending_changes=changes, error=error, skipped_versions=tuple(sorted(state.skipped)))
        if error and raise_on_error:
            raise MirrorError(error)
        return report

    def _refs(self, api: Any) -> tuple[dict[str, str], dict[str, str]]:
        refs = self._call("list refs", lambda: api.list_repo_refs(self.config.repo_id))
        return ({b.name: b.target_commit for b in refs.branches},
                {t.name: t.target_commit for t in refs.tags})

    def _files_for(self, m: VersionManifest, extra: dict[str, bytes]) -> dict[str, tuple[str, Any]]:
        """path -> (sha256, blob Path or bytes) for a tree holding version ``m`` plus ``extra``."""
        clash = sorted(RESERVED_PATHS & {f.path for f in m.files})
        if clash:
            raise UnpushableVersion(
                f"{m.name} {m.version} contains {clash}, which the mirror writes itself: rename "
                "those files and publish a new version"
            )
        files: dict[str, tuple[str, Any]] = {
            f.path: (f.sha256, self.registry.blobs.path(f.sha256)) for f in m.files
        }
        for path, data in extra.items():
            if path == "README.md" and path in files:
                continue  # the version brings its own card
            files[path] = (hashlib.sha256(data).hexdigest(), data)
        return files

    def _upload_version(self, api: Any, m: VersionManifest) -> str:
        branch, tag = self.config.upload_branch, m.version
        extra = {
            "README.md": render_card(m, license=self.config.license, aliases={}, role="version").encode(),
            REGISTRY_FILE: registry_json(m, name=m.name, aliases={}, states={}, seq=0, change=None),
        }
        files = self._files_for(m, extra)
        for _ in range(5):
            branches, tags = self._refs(api)
            if tag in tags:
                self._check_tag(api, tags[tag], files)
                return tags[tag]
            if branch not in branches:
                self._call("create branch", lambda: api.create_branch(
                    self.config.repo_id, branch=branch, exist_ok=True))
                continue
            try:
                commit = self._commit_tree(api, branch, branches[branch], files,
                                           f"{m.name} {tag}: {len(m.files)} files")
                self._call(f"tag {tag}", lambda: api.create_tag(
                    self.config.repo_id, tag=tag, revision=commit, tag_message=f"{m.name} {tag}"))
            except _Conflict:
                continue  # someone moved the branch or made the tag: look again
            except MirrorError as e:
                if "HTTP 409" not in str(e):
                    raise
                continue  # tag exists (a retried request already made it): check it above
            logger.info("mirrored %s %s to %s@%s", m.name, tag, self.config.repo_id, commit[:8])
            return commit
        raise MirrorError(f"could not upload {m.name} {tag}: the Hub repo kept changing under us")

    def _check_tag(self, api: Any, commit: str, files: dict[str, tuple[str, Any]]) -> None:
        remote = self._remote_tree(api, commit)
        for path, (sha, src) in files.items():
            if path in (REGISTRY_FILE, "README.md"):
                continue
            if not self._same(remote.get(path), sha, src):
                raise MirrorError(
                    f"tag on {self.config.repo_id} already exists at {commit[:8]} with different "
                    f"content for {path}: tags are never moved; inspect the repo and delete the "
                    "tag by hand only if it is wrong"
                )

    def _remote_tree(self, api: Any, revision: str) -> dict[str, Any]:
        entries = self._call("list tree", lambda: list(api.list_repo_tree(
            self.config.repo_id, revision=revision, recursive=True)))
        return {e.path: e for e in entries if getattr(e, "blob_id", None) is not None}

    @staticmethod
    def _same(remote: Any, sha256: str, src: Any) -> bool:
        if remote is None:
            return False
        if getattr(remote, "lfs", None) is not None:
            return remote.lfs.sha256 == sha256
        data = src if isinstance(src, bytes) else None
        if data is None:
            if Path(src).stat().st_size > (10 << 20):
                return False
            data = Path(src).read_bytes()
        return remote.blob_id == git_blob_sha1(data)

    def _commit_tree(self, api: Any, branch: str, head: str, files: dict[str, tuple[str, Any]],
                     message: str) -> str:
        """Make ``branch`` hold exactly ``files`` (plus .gitattributes); CAS on ``head``."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        remote = self._remote_tree(api, head)
        deletes = sorted(p for p in remote if p not in files and p != ".gitattributes")
        adds = sorted(p for p, (sha, src) in files.items() if not self._same(remote.get(p), sha, src))
        if not deletes and not adds:
            return head

        def ops() -> list[Any]:  # fresh objects per attempt: the client mutates them
            out: list[Any] = [CommitOperationDelete(path_in_repo=p) for p in deletes]
            for p in adds:
                src = files[p][1]
                out.append(CommitOperationAdd(path_in_repo=p, path_or_fileobj=src if isinstance(src, bytes) else str(src)))
            return out

        info = self._call(f"commit to {branch}", lambda: api.create_commit(
            self.config.repo_id, ops(), commit_message=message, revision=branch, parent_commit=head))
        return info.oid

    def _sync_main(self, api: Any, name: str, state: MirrorState) -> list[str]:
        history = self.registry.history(name)
        aliases: dict[str, str] = {}
        states: dict[str, str] = {}
        commits: list[str] = []
        for e in history:
            if e.alias is not None:
                if e.to_version is None:
                    aliases.pop(e.alias, None)
                else:
                    aliases[e.alias] = e.to_version
            states.update({v: s.value for v, s in e.state_changes.items()})
            if e.seq <= state.main_seq:
                continue
            oid = self._commit_main(api, name, e, dict(aliases), dict(states), set(state.skipped))
            if oid is not None:
                commits.append(oid)
                state.main_commit = oid
            state.main_seq = e.seq
            self._save(name, state)
        return commits

    def _commit_main(self, api: Any, name: str, e: HistoryEntry, aliases: dict[str, str],
                     states: dict[str, str], skipped: set[str] = frozenset()) -> str | None:  # type: ignore[assignment]
        prod = aliases.get(PRODUCTION)
        m = self.registry.manifest(name, prod) if prod else None
        card = (render_card(m, license=self.config.license, aliases=aliases, role="production")
                if m else render_empty_card(name, license=self.config.license))
        meta = registry_json(m, name=name, aliases=aliases, states=states, seq=e.seq, change=e)
        extra = {"README.md": card.encode(), REGISTRY_FILE: meta}
        # a skipped production version: main gets the card and registry state, not files it cannot hold
        files = self._files_for(m, extra) if m and prod not in skipped else {
            p: (hashlib.sha256(d).hexdigest(), d) for p, d in extra.items()}
        message = (f"{name}: {e.action} {e.alias or e.version} {e.from_version or '-'} -> "
                   f"{e.to_version or '-'} (seq {e.seq})")
        for _ in range(5):
            branches, _tags = self._refs(api)
            head = branches.get("main")
            if head is None:
                raise MirrorError(f"{self.config.repo_id} has no main branch: create the repo with an initial commit")
            if self._remote_seq(api, head) >= e.seq:
                return None  # another mirror process already applied this change
            try:
                oid = self._commit_tree(api, "main", head, files, message)
            except _Conflict:
                continue
            logger.info("main of %s -> %s (%s)", self.config.repo_id, oid[:8], message)
            return oid
        raise MirrorError(f"could not update main of {self.config.repo_id}: it kept moving under us")

    def _remote_seq(self, api: Any, head: str) -> int:
        remote = self._remote_tree(api, head)
        if REGISTRY_FILE not in remote:
            return 0
        with tempfile.TemporaryDirectory() as tmp:
            path = self._call("read registry file", lambda: api.hf_hub_download(
                self.config.repo_id, REGISTRY_FILE, revision=head, cache_dir=tmp))
            try:
                return int(json.loads(Path(path).read_text()).get("seq", 0))
            except (ValueError, AttributeError):
                return 0
