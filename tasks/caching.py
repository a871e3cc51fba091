"""Cache keys from content: task source + parameters + sha256 of the files a task reads.

Prefect's default cache policy includes the flow-run id, so nothing is reused across runs. The
stages of the pipeline are expensive and deterministic given their inputs, so their key is::

    sha256(task source, so8t version, parameters as JSON, sha256 of every input file)

Only *input* paths are hashed (each task names them: the dataset and base model of training, the
training output of the bake, ...); output paths are parameters like any other, so a stage's own
outputs never change its key. Re-running a flow after a failure therefore skips finished stages,
and a changed dataset, base model or code re-runs exactly the stages downstream of the change.

Cache records (the key -> result metadata) are kept inside the work directory of the run
(``<work_dir>/.prefect-cache``, see :func:`bind_cache`), next to the outputs they describe: deleting
a work directory deletes its cache, so a cache hit never points at files that are gone. The
results themselves (small pydantic models of paths and numbers) stay in Prefect's result storage.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from pydantic import BaseModel

from so8t.digests import path_digest

CACHE_DIR = ".prefect-cache"







def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


@dataclass
class ContentHash(CachePolicy):
    """Cache policy: task source + parameters + content of the input files.

    Attributes:
        input_paths: Given the task's parameters, the files or directories it reads.
    """

    input_paths: Callable[[dict[str, Any]], Iterable[str | Path | None]] | None = None

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        import so8t

        h = hashlib.sha256()
        try:
            h.update(inspect.getsource(task_ctx.task.fn).encode())
        except (OSError, TypeError):
            h.update(task_ctx.task.fn.__qualname__.encode())
        h.update(so8t.__version__.encode())
        h.update(json.dumps(_jsonable(inputs), sort_keys=True, default=str).encode())
        for p in (self.input_paths(inputs) if self.input_paths else ()):
            if p is not None and str(p):
                h.update(f"{p}={path_digest(p)}\n".encode())
        return h.hexdigest()








def bind_cache(work_dir: str | Path, *tasks: Any) -> list[Any]:
    """The tasks with their cache records stored under ``<work_dir>/.prefect-cache``.

    Returns:
        Task objects (``with_options``), in the order given; the same objects again for the same
        task and directory (a re-run, a served deployment), so they are built once per process.
    """
    keys = str(Path(work_dir).expanduser().resolve() / CACHE_DIR)
    return [_bound(t, keys) for t in tasks]


@functools.lru_cache(maxsize=256)
def _bound(task: Any, keys: str) -> Any:
    return task.with_options(cache_policy=task.cache_policy.configure(key_storage=Path(keys)))
