"""Every file in cluster/ is checked, so a typo fails CI rather than a night's run: the `ray up`
YAMLs against Ray's own autoscaler schema (after Ray fills in its defaults, as `ray up` does),
the KubeRay manifests against the fields their CRDs (ray.io/v1) and batch/v1 define; and no
file carries a credential."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
RAY_UP = sorted(CLUSTER.glob("*.yaml"))
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))

# Top-level spec fields of the ray.io/v1 CRDs (KubeRay 1.1-1.4) and of batch/v1 CronJob.
_RAY_CLUSTER_SPEC = {
    "rayVersion",
    "enableInTreeAutoscaling",
    "autoscalerOptions",
    "headServiceAnnotations",
    "headGroupSpec",
    "workerGroupSpecs",
    "suspend",
    "managedBy",
    "gcsFaultToleranceOptions",
}
_SPEC_FIELDS = {
    "RayCluster": (_RAY_CLUSTER_SPEC, {"headGroupSpec"}),
    "RayJob": (
        {
            "entrypoint",
            "metadata",
            "runtimeEnvYAML",
            "jobId",
            "shutdownAfterJobFinishes",
            "ttlSecondsAfterFinished",
            "activeDeadlineSeconds",
            "rayClusterSpec",
            "clusterSelector",
            "submitterPodTemplate",
            "submissionMode",
            "backoffLimit",
            "entrypointNumCpus",
            "entrypointNumGpus",
            "entrypointResources",
            "suspend",
            "managedBy",
            "submitterConfig",
            "deletionStrategy",
        },
        {"entrypoint"},
    ),
    "CronJob": (
        {
            "schedule",
            "timeZone",
            "startingDeadlineSeconds",
            "concurrencyPolicy",
            "suspend",
            "jobTemplate",
            "successfulJobsHistoryLimit",
            "failedJobsHistoryLimit",
        },
        {"schedule", "jobTemplate"},
    ),
}
_API = {"RayCluster": "ray.io/v1", "RayJob": "ray.io/v1", "CronJob": "batch/v1"}
_GROUP_FIELDS = {
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "rayStartParams",
    "template",
    "idleTimeoutSeconds",
    "numOfHosts",
    "scaleStrategy",
    "suspend",
}


def validate_ray_up(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _pod_containers(template: dict, where: str) -> list[dict]:
    containers = template.get("spec", {}).get("containers")
    if not containers:
        raise ValueError(f"{where}: template.spec.containers is empty")
    for c in containers:
        if not c.get("image") or not c.get("name"):
            raise ValueError(f"{where}: every container needs a name and an image")
    return containers


def _check_cluster_spec(spec: dict, where: str) -> None:
    unknown = set(spec) - _RAY_CLUSTER_SPEC
    if unknown:
        raise ValueError(f"{where}: unknown RayCluster spec fields {sorted(unknown)}")
    head = spec.get("headGroupSpec") or {}
    if "template" not in head:
        raise ValueError(f"{where}.headGroupSpec: template is required")
    _pod_containers(head["template"], f"{where}.headGroupSpec")
    for i, group in enumerate(spec.get("workerGroupSpecs", [])):
        unknown = set(group) - _GROUP_FIELDS
        missing = {"groupName", "template"} - set(group)
        if unknown or missing:
            raise ValueError(
                f"{where}.workerGroupSpecs[{i}]: unknown {sorted(unknown)}, missing {sorted(missing)}"
            )
        if not group.get("minReplicas", 0) <= group.get("replicas", 0) <= group.get("maxReplicas", 2**31):
            raise ValueError(f"{where}.workerGroupSpecs[{i}]: replicas outside [minReplicas, maxReplicas]")
        _pod_containers(group["template"], f"{where}.workerGroupSpecs[{i}]")


def validate_manifest(doc: dict) -> None:
    kind = doc.get("kind")
    if kind not in _SPEC_FIELDS:
        raise ValueError(f"unknown kind {kind!r}")
    if doc.get("apiVersion") != _API[kind]:
        raise ValueError(f"{kind}: apiVersion must be {_API[kind]}, got {doc.get('apiVersion')!r}")
    if not doc.get("metadata", {}).get("name"):
        raise ValueError(f"{kind}: metadata.name is required")
    spec = doc.get("spec") or {}
    allowed, required = _SPEC_FIELDS[kind]
    if set(spec) - allowed or required - set(spec):
        unknown, missing = sorted(set(spec) - allowed), sorted(required - set(spec))
        raise ValueError(f"{kind}: unknown spec fields {unknown}, missing {missing}")
    if kind == "RayCluster":
        _check_cluster_spec(spec, "spec")
    elif kind == "RayJob":
        if ("rayClusterSpec" in spec) == ("clusterSelector" in spec):
            raise ValueError("RayJob: set exactly one of rayClusterSpec and clusterSelector")
        if "rayClusterSpec" in spec:
            _check_cluster_spec(spec["rayClusterSpec"], "spec.rayClusterSpec")
    else:
        fields = spec["schedule"].split()
        if len(fields) != 5:
            raise ValueError(f"CronJob: schedule {spec['schedule']!r} is not a 5-field cron expression")
        pod = spec["jobTemplate"]["spec"]["template"]
        _pod_containers(pod, "spec.jobTemplate.spec.template")


def test_every_cluster_file_is_covered():
    assert {p.name for p in RAY_UP} >= {"aws.yaml", "gcp.yaml", "onprem.yaml"}
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in KUBERAY}
    assert kinds == {"RayCluster", "RayJob", "CronJob"}


@pytest.mark.parametrize("path", RAY_UP, ids=lambda p: p.name)
def test_ray_up_config_matches_rays_schema(path):
    config = yaml.safe_load(path.read_text())
    prepared = validate_ray_up(config)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # a typo in a node type's fields is caught
    broken = copy.deepcopy(config)
    node_types = broken.get("available_node_types") or {}
    if node_types:
        next(iter(node_types.values()))["min_worker"] = 1
    else:
        broken["max_worker"] = 1
    with pytest.raises(Exception, match="min_worker|max_worker"):
        validate_ray_up(broken)


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_matches_its_crd_fields(path):
    doc = yaml.safe_load(path.read_text())
    validate_manifest(doc)
    broken = copy.deepcopy(doc)
    broken["spec"]["shceduleTypo"] = 1
    with pytest.raises(ValueError, match="shceduleTypo"):
        validate_manifest(broken)


@pytest.mark.parametrize("path", [*RAY_UP, *KUBERAY, CLUSTER / "Dockerfile"], ids=lambda p: p.name)
def test_no_credentials_in_cluster_files(path):
    text = path.read_text()
    # a name assigned a value (mentioning AWS_SECRET_ACCESS_KEY in a comment is fine)
    assigned = r"(?i)(aws_secret_access_key|aws_access_key_id|password|token)\s*[:=]\s*['\"]?\w"
    assert not re.search(assigned, text) and "-----BEGIN" not in text
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
