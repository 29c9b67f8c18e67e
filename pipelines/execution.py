"""Where Dagster runs each stage, and what each stage kind needs: the resources of a
stage kind are declared once here (``DEFAULT_RESOURCES``, overridable per kind in
params.yaml ``execution.resources``) and turned into the tags of each executor:

- ``dagster-ray/config`` (dagster-ray's ``ray_executor``: one Ray job per Dagster step,
  ``num_cpus`` / ``num_gpus`` / ``memory`` / custom node ``resources`` of its entrypoint);
- ``dagster-k8s/config`` (dagster-k8s's ``k8s_job_executor``: one pod per step, its
  container's requests and limits, ``nvidia.com/gpu`` and the GPU pool's node selector
  and toleration only for the stages that ask for a GPU).

Only stages that need a GPU ask for one: backbone pre-training, feature extraction and
cells (training and scoring). Datasets, downloads, corpora, relation graphs, tables,
reports and agreement run on one CPU.

A leaf module: it imports nothing of the project (params.yaml's ``execution`` block is
validated here, and :mod:`pipelines.config` imports it).
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

EXECUTORS = ("in_process", "multiprocess", "ray", "k8s")
RAY_TAG = "dagster-ray/config"  # read by dagster_ray.configs.RayExecutionConfig.from_tags
K8S_TAG = "dagster-k8s/config"  # read by dagster_k8s.job.get_user_defined_k8s_config
STAGE_TAG = "ovml/stage-kind"  # which kind a step runs (the Ray step handler's error names it)
GPU_RESOURCE_K8S = "nvidia.com/gpu"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageResources(_Strict):
    """What one step of a stage kind needs on a node."""

    cpus: float = Field(1, ge=0)
    gpus: float = Field(0, ge=0)
    memory_gb: float | None = Field(None, gt=0)
    ray_resources: dict[str, float] = {}  # custom Ray node resources (e.g. a node pool label)
    node_selector: dict[str, str] = {}  # Kubernetes: where the step's pod may run


class StageResourcesOverride(_Strict):
    """params.yaml ``execution.resources.<kind>``: only the fields given replace the default."""

    cpus: float | None = Field(None, ge=0)
    gpus: float | None = Field(None, ge=0)
    memory_gb: float | None = Field(None, gt=0)
    ray_resources: dict[str, float] | None = None
    node_selector: dict[str, str] | None = None


_CPU = StageResources(cpus=1, gpus=0, memory_gb=4)
_GPU = StageResources(cpus=4, gpus=1, memory_gb=32)
DEFAULT_RESOURCES: dict[str, StageResources] = {
    "dataset": _CPU,
    "images": StageResources(cpus=2, gpus=0, memory_gb=4),  # I/O-bound download workers
    "backbone": _GPU,  # pre-training (or loading) a CLIP
    "features": _GPU,  # the frozen backbone over every image
    "corpus": _CPU,  # LLM requests
    "relations": _CPU,  # C2SRT's category graph (text embeddings, small)
    "cell": _GPU,  # a method's training and scoring
    "table": _CPU,
    "report": _CPU,
    "agreement": _CPU,
}
GPU_POOL_SELECTOR = {"pool": "gpu"}  # Kubernetes: the GPU node pool's label
GPU_TOLERATION = {"key": GPU_RESOURCE_K8S, "operator": "Exists", "effect": "NoSchedule"}


class RayConfig(_Strict):
    """The Ray cluster of ``executor: ray`` (dagster-ray's ``ray_executor``)."""

    # the head's job-submission (dashboard) address; $RAY_ADDRESS, when set, wins
    address: str = "http://127.0.0.1:8265"
    env_vars: list[str] = []  # forwarded to every step's Ray job (KEY or KEY=VALUE)
    max_concurrent: int | None = Field(None, gt=0)  # steps in flight at once (None: no cap)
    health_check_interval_s: int = Field(5, ge=1)  # how soon a lost node's step is noticed
    step_retries: int = Field(1, ge=0)  # a step whose Ray job died is submitted again

    def resolved_address(self) -> str:
        return os.environ.get("RAY_ADDRESS") or self.address


class ExecutionConfig(_Strict):
    """params.yaml ``execution``: which Dagster executor runs the steps, and per stage
    kind what a step needs (merged onto ``DEFAULT_RESOURCES``)."""

    executor: Literal["in_process", "multiprocess", "ray", "k8s"] = "in_process"
    multiprocess_max_concurrent: int = Field(2, gt=0)
    ray: RayConfig = RayConfig()
    resources: dict[str, StageResourcesOverride] = {}

    @field_validator("resources")
    @classmethod
    def _known_kinds(cls, v: dict[str, StageResourcesOverride]) -> dict:
        unknown = sorted(set(v) - set(DEFAULT_RESOURCES))
        if unknown:
            raise ValueError(
                f"unknown stage kind(s) {unknown} (known: {sorted(DEFAULT_RESOURCES)})"
            )
        return v

    def resolved_executor(self) -> str:
        """``$OVML_EXECUTOR`` when set (a deployment picks its executor without editing
        params.yaml: infra/k8s/dagster-values.yaml), else ``executor``."""
        chosen = os.environ.get("OVML_EXECUTOR") or self.executor
        if chosen not in EXECUTORS:
            raise ValueError(
                f"$OVML_EXECUTOR={chosen!r} is not an executor (one of {', '.join(EXECUTORS)})"
            )
        return chosen

    def resources_for(self, kind: str) -> StageResources:
        """The resources of one step of ``kind``: the default, then params' override."""
        base = DEFAULT_RESOURCES.get(kind, _CPU)
        override = self.resources.get(kind)
        if override is None:
            return base
        return base.model_copy(update=override.model_dump(exclude_none=True))


def ray_config(res: StageResources) -> dict[str, Any]:
    """dagster-ray's per-step config (``RayExecutionConfig``) for ``res``."""
    cfg: dict[str, Any] = {"num_cpus": res.cpus, "num_gpus": res.gpus}
    if res.memory_gb is not None:
        cfg["memory"] = int(res.memory_gb * 2**30)
    if res.ray_resources:
        cfg["resources"] = dict(res.ray_resources)
    return cfg


def _k8s_quantity_cpu(cpus: float) -> str:
    return f"{int(cpus * 1000)}m" if cpus != int(cpus) else str(int(cpus))


def k8s_config(res: StageResources) -> dict[str, Any]:
    """dagster-k8s's per-step config (``UserDefinedDagsterK8sConfig``) for ``res``: the
    container's requests/limits; GPU steps also get the GPU pool's selector and toleration."""
    requests: dict[str, str] = {"cpu": _k8s_quantity_cpu(res.cpus)}
    limits: dict[str, str] = {}
    if res.memory_gb is not None:
        requests["memory"] = f"{int(res.memory_gb * 1024)}Mi"
        limits["memory"] = requests["memory"]
    pod: dict[str, Any] = {}
    selector = dict(res.node_selector)
    if res.gpus:
        if res.gpus != int(res.gpus):
            raise ValueError(f"Kubernetes schedules whole GPUs, not {res.gpus}")
        limits[GPU_RESOURCE_K8S] = str(int(res.gpus))
        selector = {**GPU_POOL_SELECTOR, **selector}
        pod["tolerations"] = [dict(GPU_TOLERATION)]
    if selector:
        pod["node_selector"] = selector
    container: dict[str, Any] = {"resources": {"requests": requests}}
    if limits:
        container["resources"]["limits"] = limits
    return {"container_config": container, "pod_spec_config": pod}


def stage_op_tags(execution: ExecutionConfig, kind: str) -> dict[str, Any]:
    """The op tags of every step of ``kind`` (a function of the kind, never of an asset
    key): both executors' configs, read only by the executor in use."""
    res = execution.resources_for(kind)
    return {STAGE_TAG: kind, RAY_TAG: ray_config(res), K8S_TAG: k8s_config(res)}


def infeasible(res: StageResources, nodes: list[dict[str, float]]) -> str | None:
    """Why no node of a cluster can run a step needing ``res`` (None: some node can).

    ``nodes`` are the alive nodes' total resources as Ray reports them (``CPU``, ``GPU``,
    ``memory`` in bytes, custom names)."""
    need = {"CPU": res.cpus, "GPU": res.gpus, **res.ray_resources}
    if res.memory_gb is not None:
        need["memory"] = res.memory_gb * 2**30
    need = {k: v for k, v in need.items() if v}
    if any(all(node.get(k, 0) >= v for k, v in need.items()) for node in nodes):
        return None
    best = {k: max((n.get(k, 0) for n in nodes), default=0) for k in need}
    short = [k for k, v in need.items() if best[k] < v]

    def amount(k: str, v: float) -> str:
        return f"{v / 2**30:g} GiB memory" if k == "memory" else f"{v:g} {k}"

    return (
        f"needs {', '.join(amount(k, v) for k, v in need.items())} on one node, but "
        f"{len(nodes)} node(s) offer at most "
        + ", ".join(amount(k, best[k]) for k in short)
        + (" (the cluster has no GPU)" if "GPU" in short and best["GPU"] == 0 else "")
    )
