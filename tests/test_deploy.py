"""The deployment files parse, hang together, and run commands the CLI accepts."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from search_spaces import check_config
from study.launch import config_from_args
from study.run.cluster import PACKAGES

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "study" / "deploy"


def _accepted(command: str) -> None:
    """``command`` is ``python -m study.launch ...`` whose flags parse and validate."""
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "study.launch"], command
    config, resuming = config_from_args(argv[3:])
    assert not resuming
    check_config(config)


def _kuberay() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((DEPLOY / "kuberay.yaml").read_text())}


def test_kuberay_job_runs_the_paper_study_on_a_cpu_head_and_gpu_workers():
    docs = _kuberay()
    assert set(docs) == {"PersistentVolumeClaim", "RayCluster", "RayJob"}
    cluster, job = docs["RayCluster"]["spec"], docs["RayJob"]["spec"]
    _accepted(job["entrypoint"])
    assert "--preset paper" in job["entrypoint"] and "--storage /shared/" in job["entrypoint"]
    assert job["clusterSelector"]["ray.io/cluster"] == docs["RayCluster"]["metadata"]["name"]

    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    (workers,) = cluster["workerGroupSpecs"]
    gpu_limits = [
        c["resources"]["limits"]["nvidia.com/gpu"] for c in workers["template"]["spec"]["containers"]
    ]
    assert gpu_limits == ["1"]

    pods = [head["template"]["spec"], workers["template"]["spec"]]
    for pod in pods:
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert {"/data", "/models", "/shared"} <= mounts.keys() and set(mounts.values()) <= volumes.keys()
        assert (
            volumes["shared"]["persistentVolumeClaim"]["claimName"]
            == docs["PersistentVolumeClaim"]["metadata"]["name"]
        )
    containers = [c for pod in [*pods, job["submitterPodTemplate"]["spec"]] for c in pod["containers"]]
    for container in containers:  # every Ray process authenticates with the Secret's token
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "unlearning-ray-token"
    assert len({c["image"] for c in containers}) == 1


def test_ray_up_config_passes_rays_own_schema_and_keeps_authentication():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` checks before it starts anything
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0, "GPU": 0}
    commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert sum("RAY_AUTH_MODE=token" in c for c in commands) == 2
    assert "/home/ray/.ray/auth_token" in config["file_mounts"]

    broken = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    broken["available_node_types"]["gpu_worker"]["gpus"] = 1  # a typo the schema catches
    with pytest.raises(Exception, match="gpus"):
        validate_config(prepare_config(broken))


def test_every_study_command_in_the_readme_is_one_the_cli_accepts():
    readme = (ROOT / "README.md").read_text()
    commands = [
        m.group(0).rstrip('"')
        for m in re.finditer(r"python -m study\.launch[^\n`|]*", readme.replace("\\\n", " "))
        if "--resume" not in m.group(0) and "--help" not in m.group(0)
    ]
    assert len(commands) >= 4
    for command in commands:
        _accepted(" ".join(command.split("#")[0].split()))


def test_the_image_matches_the_clusters_ray_and_python():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    ray_version, python = re.search(r"FROM rayproject/ray:([\d.]+)-py(\d+)-gpu", dockerfile).groups()
    assert _kuberay()["RayCluster"]["spec"]["rayVersion"] == ray_version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["requires-python"] == f">={python[0]}.{python[1:]}"
    # The image installs what pip installs and what the driver ships to the workers.
    installed = {
        pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {
        line.split()[-1].removeprefix("./") for line in dockerfile.splitlines() if line.startswith("COPY")
    }
    assert installed == set(PACKAGES) and set(PACKAGES) <= copied
