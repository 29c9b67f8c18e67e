"""The Kubernetes path, validated offline: the Job manifests dagster-k8s's
``k8s_job_executor`` would create for a cell's step and a table's step (built through
dagster-k8s's own API from the steps' ``dagster-k8s/config`` tags and the Helm values'
launcher settings), and the pod templates of the KubeRay example, all checked against
Kubernetes' schemas (kubernetes-validate, strict: unknown fields are errors)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import kubernetes
import kubernetes_validate
import pytest
import yaml

from tests.conftest import TINY_PARAMS, write_params

INFRA = Path(__file__).resolve().parent.parent / "infra" / "k8s"
K8S_VERSION = kubernetes_validate.latest_version()


@pytest.fixture(scope="module")
def step_tags(tmp_path_factory) -> dict[str, dict[str, str]]:
    """Each demo_steps op's tags, as the step handler sees them (string values)."""
    from dagster_project.executors import demo_steps_job
    from pipelines.config import load_params

    params = load_params(write_params(tmp_path_factory.mktemp("k8s"), TINY_PARAMS))
    job = demo_steps_job(params)
    return {
        n.name: {k: v if isinstance(v, str) else json.dumps(v) for k, v in n.tags.items()}
        for n in job.graph.node_defs
    }


def _values() -> dict:
    return yaml.safe_load((INFRA / "dagster-values.yaml").read_text())


def _step_job(tags: dict[str, str], op: str) -> dict:
    """The Job manifest dagster-k8s builds for one step (as K8sStepHandler.launch_step)."""
    from dagster_k8s.job import (
        DagsterK8sJobConfig,
        construct_dagster_k8s_job,
        get_user_defined_k8s_config,
    )

    launcher = _values()["runLauncher"]["config"]["k8sRunLauncher"]
    deployment = _values()["dagster-user-deployments"]["deployments"][0]
    image = deployment["image"]
    job_config = DagsterK8sJobConfig(
        job_image=f"{image['repository']}:{image['tag']}",
        dagster_home="/opt/dagster/dagster_home",
        instance_config_map="dagster-instance",
        postgres_password_secret="dagster-postgresql-secret",
        env_secrets=[s["name"] for s in launcher["envSecrets"]],
        env_vars=[f"{e['name']}={e['value']}" for e in deployment["env"]],
    )
    job = construct_dagster_k8s_job(
        job_config=job_config,
        args=["dagster", "api", "execute_step"],
        job_name=f"dagster-step-{op.replace('_', '-')}"[:63].rstrip("-"),
        component="step_worker",
        user_defined_k8s_config=get_user_defined_k8s_config(tags),
        labels={"dagster/job": "demo_steps", "dagster/op": op},
        env_vars=[{"name": "DAGSTER_RUN_STEP_KEY", "value": op}],
    )
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)


def _container(manifest: dict) -> dict:
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    return container


def test_cell_step_job_asks_for_one_gpu_on_the_gpu_pool(step_tags):
    op = "stage__cell_toyworld_clip_zeroshot"
    manifest = _step_job(step_tags[op], op)
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    res = _container(manifest)["resources"]
    assert res["limits"]["nvidia.com/gpu"] == "1"
    assert res["requests"]["cpu"] == "4" and res["requests"]["memory"] == "32768Mi"
    pod = manifest["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    env = {e["name"]: e.get("value") for e in _container(manifest)["env"]}
    assert env["OVML_EXECUTOR"] == "k8s"


def test_table_step_job_is_one_cpu_and_no_gpu(step_tags):
    op = "stage__table_tiny"
    manifest = _step_job(step_tags[op], op)
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    res = _container(manifest)["resources"]
    assert res["requests"]["cpu"] == "1"
    assert "nvidia.com/gpu" not in res.get("limits", {})
    pod = manifest["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and not pod.get("tolerations")


def test_only_gpu_stage_kinds_ask_for_a_gpu(step_tags):
    gpu = {
        op
        for op, tags in step_tags.items()
        if json.loads(tags["dagster-ray/config"])["num_gpus"] > 0
    }
    assert gpu == {
        "stage__backbone_toy_clip",
        "stage__features_toyworld_toy_clip",
        "stage__cell_toyworld_random",
        "stage__cell_toyworld_clip_zeroshot",
        "stage__cell_toyworld_clip_zeroshot_single",
    }
    for op, tags in step_tags.items():  # the two executors' tags say the same thing
        k8s_gpu = json.loads(tags["dagster-k8s/config"])["container_config"]["resources"]
        assert ("nvidia.com/gpu" in k8s_gpu.get("limits", {})) == (op in gpu), op


def test_a_broken_manifest_is_rejected():
    """The validator is strict: a misspelt field is an error (the checks above can fail)."""
    bad = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "x"},
        "spec": {"template": {"spec": {"containerz": [], "restartPolicy": "Never"}}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_helm_values_run_pod_is_a_cpu_coordinator_and_steps_use_k8s_job_executor(monkeypatch):
    from dagster_k8s import k8s_job_executor

    from dagster_project.executors import executor_for
    from pipelines.execution import ExecutionConfig

    params = SimpleNamespace(execution=ExecutionConfig())  # executor_for reads only this

    launcher = _values()["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    run_res = launcher["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConfig"]
    assert "nvidia.com/gpu" not in json.dumps(run_res)  # GPUs go to step pods only
    env = _values()["dagster-user-deployments"]["deployments"][0]["env"]
    monkeypatch.setenv("OVML_EXECUTOR", {e["name"]: e["value"] for e in env}["OVML_EXECUTOR"])
    assert executor_for(params) is k8s_job_executor
    monkeypatch.setenv("OVML_EXECUTOR", "kubernetes")
    with pytest.raises(ValueError, match="OVML_EXECUTOR='kubernetes' is not an executor"):
        executor_for(params)


def test_kuberay_example_pods_validate_and_only_the_gpu_group_has_gpus():
    cluster = yaml.safe_load((INFRA / "raycluster.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    groups = {"head": spec["headGroupSpec"]} | {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    for name, group in groups.items():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"ovml-ray-{name}"}}
        pod["spec"] = group["template"]["spec"]
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
        limits = pod["spec"]["containers"][0]["resources"].get("limits", {})
        has_gpu = "nvidia.com/gpu" in limits
        assert has_gpu == (name == "gpu"), name
        assert group["rayStartParams"].get("num-gpus") == limits.get("nvidia.com/gpu"), name
