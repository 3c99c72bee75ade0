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


def _accepted(command: str):
    """``command`` is ``python -m study.launch ...`` whose flags parse and validate; its config."""
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "study.launch"], command
    config, resuming = config_from_args(argv[3:])
    assert not resuming
    check_config(config)
    return config


def _kuberay() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((DEPLOY / "kuberay.yaml").read_text())}


def _containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


def test_kuberay_job_brings_up_an_authenticated_autoscaling_cluster_and_continues_when_retried():
    docs = _kuberay()
    assert set(docs) == {"PersistentVolumeClaim", "RayJob"}
    job = docs["RayJob"]["spec"]
    cluster = job["rayClusterSpec"]
    config = _accepted(job["entrypoint"])
    assert config.preset == "paper" and config.storage.startswith("/shared/")
    # A retry (a new cluster, the same entrypoint) continues the study from the shared volume.
    assert "--resume-or-start" in job["entrypoint"] and job["backoffLimit"] >= 1
    assert config.run_dir.startswith("/shared/")

    # KubeRay hands the Secret's token to every Ray process, its autoscaler and job client
    # included (authOptions, KubeRay >= 1.6); no container wires it by hand.
    assert cluster["authOptions"] == {"mode": "token", "secretName": "unlearning-ray-token"}
    header = (DEPLOY / "kuberay.yaml").read_text().split("---")[0]
    assert "KubeRay v1.6.0 or newer" in header and "Written against KubeRay v1.7.0 and Ray 2.60.0" in header
    head = cluster["headGroupSpec"]
    (workers,) = cluster["workerGroupSpecs"]
    pods = {"head": head["template"]["spec"], "workers": workers["template"]["spec"]}
    for pod in pods.values():
        for container in _containers(pod):
            assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & {e["name"] for e in container.get("env", [])}
        # The image's ray user (uid 1000, group 100) can write the shared volume.
        assert pod["securityContext"] == {"runAsUser": 1000, "runAsGroup": 100, "fsGroup": 100}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert (
            volumes["shared"]["persistentVolumeClaim"]["claimName"]
            == docs["PersistentVolumeClaim"]["metadata"]["name"]
        )
    assert len({c["image"] for pod in pods.values() for c in _containers(pod)}) == 1

    # The autoscaler grows the GPU group as far as the trials in flight ask.
    assert cluster["enableInTreeAutoscaling"] is True and cluster["autoscalerOptions"]["version"] == "v2"
    assert head["rayStartParams"]["num-gpus"] == "0" and head["rayStartParams"]["num-cpus"] == "0"
    (worker,) = pods["workers"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1" and config.gpus_per_trial == 1
    assert config.max_trials_in_flight == workers["maxReplicas"] and workers["replicas"] >= 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pods["workers"][
        "tolerations"
    ]
    assert pods["workers"]["nodeSelector"]

    # Data and weights only where the driver runs (ReadWriteOnce volumes attach to one pod).
    mounts = {
        name: {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]} for name, pod in pods.items()
    }
    assert {"/data", "/models", "/shared"} <= mounts["head"] and "/shared" in mounts["workers"]
    assert not {"/data", "/models"} & mounts["workers"]
    assert {v["name"] for v in pods["workers"]["volumes"]} == {"shared", "dshm"}
    # The claim names a storage class that must be set: Kubernetes rejects the placeholder.
    claim = docs["PersistentVolumeClaim"]["spec"]
    assert claim["accessModes"] == ["ReadWriteMany"] and claim["storageClassName"] == "<rwx-storage-class>"


def test_ray_up_config_passes_rays_own_schema_keeps_authentication_and_shares_the_run_directory():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` checks before it starts anything
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0, "GPU": 0}
    commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert sum("RAY_AUTH_MODE=token" in c for c in commands) == 2
    assert "/home/ray/.ray/auth_token" in config["file_mounts"]
    # Trials write checkpoints to the bucket from the workers: they need an instance profile.
    assert config["available_node_types"]["gpu_worker"]["node_config"]["IamInstanceProfile"]["Arn"]
    # The run directory and the cache on EFS, mounted into every node's container as /shared.
    assert any("mount -t nfs4" in c and "/efs" in c for c in config["initialization_commands"])
    assert "-v /efs:/shared" in config["docker"]["run_options"]
    assert "--env XDG_CACHE_HOME=/shared/cache" in config["docker"]["run_options"]

    broken = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    broken["available_node_types"]["gpu_worker"]["gpus"] = 1  # a typo the schema catches
    with pytest.raises(Exception, match="gpus"):
        validate_config(prepare_config(broken))


def test_the_readmes_ray_up_command_continues_after_a_loss_and_fills_the_gpu_workers():
    readme = (ROOT / "README.md").read_text().replace("\\\n", " ")
    cluster = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    (command,) = re.findall(r'ray exec study/deploy/ray-cluster.yaml --tmux "([^"]+)"', readme)
    config = _accepted(command)
    assert "--resume-or-start" in command and config.run_dir.startswith("/shared/")
    assert config.storage.startswith("s3://") and config.resource_wait_s > 0
    assert config.max_trials_in_flight == cluster["available_node_types"]["gpu_worker"]["max_workers"]


def test_every_study_command_in_the_readme_is_one_the_cli_accepts():
    readme = (ROOT / "README.md").read_text()
    commands = [
        m.group(0).rstrip('"')
        for m in re.finditer(r"python -m study\.launch[^\n`|]*", readme.replace("\\\n", " "))
        if not re.search(r"--resume(?!-or-start)", m.group(0)) and "--help" not in m.group(0)
    ]
    assert len(commands) >= 4 and sum("--resume-or-start" in c for c in commands) == 2
    for command in commands:
        _accepted(" ".join(command.split("#")[0].split()))


def test_the_image_matches_the_clusters_ray_and_python():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    ray_version, python = re.search(r"FROM rayproject/ray:([\d.]+)-py(\d+)-gpu", dockerfile).groups()
    assert _kuberay()["RayJob"]["spec"]["rayClusterSpec"]["rayVersion"] == ray_version
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


def test_torch_is_declared_without_the_releases_that_run_bf16_conv3d_without_cudnn():
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (declared,) = [Requirement(r) for r in project["project"]["dependencies"] if r.startswith("torch")]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (pinned,) = [Requirement(r) for r in re.findall(r'pip install --no-cache-dir "(torch[^"]+)"', dockerfile)]
    for requirement in (declared, pinned):
        assert not {"2.9.0", "2.9.1"} & set(requirement.specifier.filter(["2.9.0", "2.9.1"]))
        assert "2.13.0" in requirement.specifier and "2.8.0" in requirement.specifier
    # The cache folder the image names exists in it, on every node (no /shared on `ray up`).
    assert "RUN mkdir -p /home/ray/.cache/mri-unlearning-study" in dockerfile
    assert "ENV XDG_CACHE_HOME=/home/ray/.cache" in dockerfile
