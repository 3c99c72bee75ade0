"""A real multi-node Ray cluster on this machine, results on a real S3-compatible server.

``ray.cluster_utils.Cluster`` starts a head with no trial resources and two worker nodes
with one CPU and one ``trial_slot`` each (a custom resource standing in for a GPU); moto's
server mode is the bucket. The study joins with ``--address`` like a user on a login node.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.fs
import pytest

from analysis.report import build_report
from analysis.study_state import load_study
from study.run.checkpoint import STATE_FILE
from study.run.rundir import RunDir

pytestmark = pytest.mark.slow  # a multi-node Ray cluster and whole studies

BUCKET = "studies"
TRIAL_RESOURCES = "trial_resources = {trial_slot = 1}\n"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with an empty bucket; yields ``(storage URI, filesystem)``."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    credentials = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in credentials}
    os.environ.update(credentials)  # the cluster's nodes, started below, inherit them
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket=BUCKET)
    uri = f"s3://{BUCKET}/unlearning?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    fs = pyarrow.fs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", region="us-east-1")
    yield uri, fs
    server.stop()
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture(scope="module")
def cluster(s3):
    """A head without CPUs for trials and two worker nodes; yields ``(address, worker node ids)``."""
    from ray.cluster_utils import Cluster

    # The head notes its address in /tmp/ray/ray_current_cluster and fails if the folder is missing.
    Path("/tmp/ray").mkdir(exist_ok=True)
    temp_dir = tempfile.mkdtemp(prefix="rc-")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "temp_dir": temp_dir, "include_dashboard": False},
    )
    workers = [cluster.add_node(num_cpus=1, resources={"trial_slot": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster.address, {node.node_id for node in workers}, Path(temp_dir)
    cluster.shutdown()
    Path("/tmp/ray/ray_current_cluster").unlink(missing_ok=True)


def _config(tmp_path: Path) -> str:
    path = tmp_path / "cluster.toml"
    path.write_text(TRIAL_RESOURCES)
    return str(path)


def _keys(fs: pyarrow.fs.FileSystem, prefix: str) -> list[str]:
    selector = pyarrow.fs.FileSelector(prefix, recursive=True, allow_not_found=True)
    return [info.path for info in fs.get_file_info(selector)]


def _read(fs: pyarrow.fs.FileSystem, key: str) -> str:
    with fs.open_input_stream(key) as stream:
        return stream.readall().decode()


def _intervals(results: pd.DataFrame) -> pd.DataFrame:
    """Each trial's span in time (seconds since the epoch) from Tune's per-report timestamps."""
    start = results["timestamp"] - results["time_total_s"]
    return (
        results.assign(start=start)
        .groupby(["trial_id", "strategy"])
        .agg(start=("start", "min"), end=("timestamp", "max"))
    )


def test_a_study_across_nodes_keeps_everything_in_the_bucket(cluster, s3, studies, tmp_path):
    address, worker_ids, temp_dir = cluster
    uri, fs = s3
    run_dir = tmp_path / "across"
    membership = ["--shadow-models", "4", "--retrain-seeds", "2"]
    driver = studies.start(
        run_dir,
        "--address",
        address,
        "--storage",
        uri,
        "--config",
        _config(tmp_path),
        *membership,
        env=studies.env(),
    )
    output, _ = driver.communicate(timeout=420)
    assert driver.returncode == 0, output[-4000:]
    trials = studies.assert_complete(run_dir)

    experiment = f"{BUCKET}/unlearning/{run_dir.name}"
    keys = _keys(fs, experiment)
    checkpoints = {k.rsplit("/", 1)[0] for k in keys if "/checkpoint_" in k and k.endswith(STATE_FILE)}
    assert len(checkpoints) == trials["trial_id"].nunique()  # each trial's last, the older ones pruned
    assert not Path(RunDir(run_dir).storage.root).exists()

    # Read back from the bucket as the report does for a study that has not finished.
    run, config = RunDir.open(run_dir)
    from study.run.results import rows_from_experiment

    stored = rows_from_experiment(run.storage.experiment_path, run.storage.filesystem()[0], config.max_epochs)
    pd.testing.assert_frame_equal(stored, trials)
    lines = [line for k in keys if k.endswith("result.json") for line in _read(fs, k).splitlines()]
    results = pd.DataFrame([json.loads(line) for line in lines])
    assert set(results["node_id"]) == worker_ids  # trials ran on both worker nodes, none on the head
    # The shadow models and the second retrain seed trained side by side, on both workers.
    trained_on = RunDir(run_dir).baseline_metrics()["trained_on"]
    assert {"shadow_0", "shadow_1", "shadow_2", "shadow_3", "retrain_seed_1"} <= set(trained_on)
    assert {node.removeprefix("Ray node ") for node in trained_on.values()} == worker_ids
    # Every trial at every reported epoch was tested on each forget subject, on the workers.
    privacy = RunDir(run_dir).read_privacy()
    tested = privacy[privacy["model"].str.contains("@")]
    expected = {f"{t}@{e}" for t, e in zip(trials["trial_id"], trials["epoch"], strict=True)}
    assert set(tested["model"]) == expected and len(tested) == len(expected) * len(config.forget)
    assert tested["p_to_retrain"].between(0, 1).all() and set(tested["direction"]) <= {"under", "over"}
    # The workers ran the package the driver shipped (runtime_env py_modules), not an install of their own.
    shipped = list(
        temp_dir.glob("session_*/runtime_resources/py_modules_files/*/trainables/tune_trainable.py")
    )
    assert (
        shipped
        and shipped[0].read_text() == (Path(__file__).parents[1] / "trainables/tune_trainable.py").read_text()
    )
    results["strategy"] = results["trial_id"].map(trials.groupby("trial_id")["strategy"].first())
    spans = _intervals(results).reset_index()
    overlaps = [
        (a.strategy, b.strategy)
        for a in spans.itertuples()
        for b in spans.itertuples()
        if a.strategy != b.strategy and a.start < b.end and b.start < a.end
    ]
    assert overlaps, f"no two strategies ran at the same time:\n{spans.to_string(float_format=str)}\n{output}"

    # A deletion request on this study runs as one Ray task on a worker node (--address).
    out = tmp_path / "forget"
    lenient = ["--max-retain-loss", "1", "--force"]  # 2-epoch trials: the verdict may well fail
    request = [sys.executable, "-m", "study.forget", str(run_dir), "--subjects", "1", "--address", address]
    done = subprocess.run(
        [*request, "--out", str(out), *lenient],
        env=studies.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "audit.json").read_text())
    assert record["unlearning"]["computed_on"].removeprefix("Ray node ") in worker_ids
    assert (out / "unlearned.pt").is_file() and record["model_written"]

    RunDir(run_dir).trials_file.unlink()
    study = load_study(run_dir)
    report = build_report(study)
    assert len(load := pd.read_parquet(RunDir(run_dir).pareto_file)) and set(load["strategy"]) <= set(
        trials["strategy"]
    )
    page = report.html.read_text()
    assert "trials.parquet is not written yet" in page and f"{len(trials)} trial-epochs" in page
    last = trials[trials["epoch"] == studies.EPOCHS].iloc[0]
    assert run.load_model_of(last["trial_id"], studies.EPOCHS) is not None  # its checkpoint, from the bucket


def test_a_driver_killed_mid_study_resumes_from_the_bucket_losing_nothing(cluster, s3, studies, tmp_path):
    address, *_ = cluster
    uri, fs = s3
    run_dir = tmp_path / "killed"
    env = studies.env()
    driver = studies.start(
        run_dir, "--address", address, "--storage", uri, "--config", _config(tmp_path), env=env
    )
    experiment = f"{BUCKET}/unlearning/{run_dir.name}"

    def mid_study() -> bool:
        keys = _keys(fs, experiment)
        return sum(k.endswith(STATE_FILE) for k in keys) >= 6 and any("experiment_state" in k for k in keys)

    studies.wait_until(mid_study, driver, "six checkpoints in the bucket")
    os.kill(driver.pid, signal.SIGKILL)  # the driver only: the cluster lives on, as on a login node
    driver.communicate(timeout=60)
    assert not RunDir(run_dir).trials_file.exists()

    resumed = studies.resume(run_dir, env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    studies.assert_complete(run_dir)
    assert not Path(RunDir(run_dir).storage.root).exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--gpus-per-trial", "1"],
            "--gpus-per-trial 1: no node of the cluster has 1 GPU (3 nodes, at most 0 GPU",
        ),
        (
            ["--cpus-per-trial", "2"],
            "--cpus-per-trial 2: no node of the cluster has 2 CPU (3 nodes, at most 1 CPU",
        ),
    ],
)
def test_requests_no_node_can_hold_are_refused_before_any_compute(
    cluster, s3, studies, tmp_path, flags, message
):
    address, *_ = cluster
    uri, fs = s3
    run_dir = tmp_path / "impossible"
    started = time.monotonic()
    driver = studies.start(run_dir, "--address", address, "--storage", uri, *flags, env=studies.env())
    output, _ = driver.communicate(timeout=120)
    assert time.monotonic() - started < 60
    assert driver.returncode == 2, output[-3000:]
    assert output.strip().splitlines()[-1].startswith(f"error: {message}")
    assert not run_dir.exists()
    assert not _keys(fs, f"{BUCKET}/unlearning/{run_dir.name}")
