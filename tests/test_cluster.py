"""A real multi-node Ray cluster on this machine, results on a real S3-compatible server.

``ray.cluster_utils.Cluster`` starts a head with no trial resources and one worker node
with one CPU and one ``trial_slot`` (a custom resource standing in for a GPU); the first
test adds two more while its study runs, as an autoscaler would. moto's server mode is the
bucket. The study joins with ``--address`` like a user on a login node.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def _start_cluster(workers: int) -> tuple[Any, Path]:
    """A head without CPUs for trials and ``workers`` nodes of one trial slot; ``(Cluster, temp dir)``."""
    from ray.cluster_utils import Cluster

    # The head notes its address in /tmp/ray/ray_current_cluster and fails if the folder is missing.
    Path("/tmp/ray").mkdir(exist_ok=True)
    temp_dir = tempfile.mkdtemp(prefix="rc-")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "temp_dir": temp_dir, "include_dashboard": False},
    )
    for _ in range(workers):
        _add_worker(cluster)
    cluster.wait_for_nodes()
    return cluster, Path(temp_dir)


def _add_worker(cluster: Any) -> str:
    """One more worker node (one CPU, one trial slot); its node id."""
    return cluster.add_node(num_cpus=1, resources={"trial_slot": 1}).node_id


@pytest.fixture(scope="module")
def cluster(s3):
    """A head and one worker node; yields ``(Cluster, temp dir)``."""
    cluster, temp_dir = _start_cluster(workers=1)
    yield cluster, temp_dir
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


def test_a_study_grows_onto_nodes_that_join_and_keeps_everything_in_the_bucket(
    cluster, s3, studies, tmp_path
):
    ray_cluster, temp_dir = cluster
    address, worker_ids = ray_cluster.address, {n.node_id for n in ray_cluster.worker_nodes}
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
    experiment = f"{BUCKET}/unlearning/{run_dir.name}"
    # Two nodes join once Tune's experiment started on the one worker there was at launch, as
    # an autoscaler adds them for the trials pending (a smoke trial lasts seconds: any later,
    # and the first worker would have run them all).
    studies.wait_until(
        lambda: any(k.endswith("tuner.pkl") for k in _keys(fs, experiment)), driver, "Tune's experiment"
    )
    joined_at = time.time()
    worker_ids |= {_add_worker(ray_cluster) for _ in range(2)}
    output, _ = driver.communicate(timeout=420)
    assert driver.returncode == 0, output[-4000:]
    trials = studies.assert_complete(run_dir)
    assert "in flight (the slots alive, at least 8 (the autoscaler's maximum is not known" in output
    # What a person reads of it (stdout and stderr, not a terminal): a line per trial start and
    # end, the search's status with the objectives; no colour codes, Tune boxes or Ray's lines per checkpoint.
    assert "\x1b[" not in output and len(output.splitlines()) < 150, output
    for trial_id in trials["trial_id"].unique():
        assert f" {trial_id} started: " in output and f" {trial_id} done at epoch " in output
    assert re.search(
        r"^search: 4/4 done, 0 running, 0 pending; .* front of \d+: best forget_drop ", output, re.M
    )
    assert "╭" not in output and "Checkpoint successfully created" not in output

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
    results["strategy"] = results["trial_id"].map(trials.groupby("trial_id")["strategy"].first())
    spans = _intervals(results).reset_index()
    assert set(results["node_id"]) == worker_ids, (  # trials ran on all three workers, none on the head
        f"nodes joined at {joined_at}:\n{spans.to_string(float_format=str)}\n{output[-3000:]}"
    )
    # The shadow models and the second retrain seed trained on the cluster (its first worker).
    trained_on = RunDir(run_dir).baseline_metrics()["trained_on"]
    assert {"shadow_0", "shadow_1", "shadow_2", "shadow_3", "retrain_seed_1"} <= set(trained_on)
    assert {node.removeprefix("Ray node ") for node in trained_on.values()} <= worker_ids
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
    # Spans from Tune's whole-second report timestamps: an overlap of under a second may show.
    at_once = max(((spans.start <= t) & (t < spans.end)).sum() for t in spans.start)
    assert at_once >= 3, f"at most {at_once} trials at once:\n{spans.to_string(float_format=str)}"
    assert spans.groupby("strategy").size().to_dict() == {"max_loss": 2, "noisy_label": 2}

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


def test_a_study_whose_whole_cluster_went_away_resumes_on_a_new_one_losing_nothing(s3, studies, tmp_path):
    """Driver, head and workers gone (a ``ray up`` head lost, a RayJob's cluster deleted) in
    the instant a trial writes a new checkpoint: the saved experiment state may still name
    the one before, which must still be in the bucket. The run directory and the bucket
    remain; the job's one command (``--resume-or-start``, as a retried RayJob runs it), on a
    new cluster, continues the study (and refuses other settings: test_study)."""
    uri, fs = s3
    run_dir, env = tmp_path / "lost", studies.env()
    job = ["--resume-or-start", "--storage", uri, "--config", _config(tmp_path)]
    first, _ = _start_cluster(workers=1)
    driver = studies.start(run_dir, *job, "--address", first.address, env=env)
    experiment = f"{BUCKET}/unlearning/{run_dir.name}"

    def checkpoints() -> set[str]:
        return {k.rsplit("/", 1)[0] for k in _keys(fs, experiment) if "/checkpoint_" in k}

    try:
        studies.wait_until(
            lambda: len(checkpoints()) >= 3 and any("experiment_state" in k for k in _keys(fs, experiment)),
            driver,
            "three checkpoints in the bucket",
        )
        before, deadline = checkpoints(), time.monotonic() + 60
        while checkpoints() <= before and time.monotonic() < deadline:
            pass  # each listing takes milliseconds
        os.kill(driver.pid, signal.SIGKILL)
        driver.communicate(timeout=60)
    finally:
        first.shutdown()
    assert not RunDir(run_dir).trials_file.exists()

    second, _ = _start_cluster(workers=1)
    try:
        resumed = studies.run(run_dir, *job, "--address", second.address, env=env)
    finally:
        second.shutdown()
        Path("/tmp/ray/ray_current_cluster").unlink(missing_ok=True)
    assert resumed.returncode == 0, studies.told(resumed)
    assert resumed.stdout.startswith(f"resuming the study in {run_dir}")
    studies.assert_complete(run_dir)
    assert not Path(RunDir(run_dir).storage.root).exists()


def test_a_request_no_node_can_hold_is_refused_before_any_compute(cluster, s3, studies, tmp_path):
    """Workers of 1 CPU each, together more, hold no trial of 2 (a GPU no node has: test_bad_input)."""
    address = cluster[0].address
    uri, fs = s3
    run_dir = tmp_path / "impossible"
    started = time.monotonic()
    driver = studies.start(
        run_dir, "--address", address, "--storage", uri, "--cpus-per-trial", "2", env=studies.env()
    )
    output, _ = driver.communicate(timeout=120)
    assert time.monotonic() - started < 60
    assert driver.returncode == 2, output[-3000:]
    message = r"--cpus-per-trial 2: no node of the cluster has 2 CPU \(\d nodes, at most 1 CPU"
    assert re.match(f"error: {message}", output.strip().splitlines()[-1]), output[-2000:]
    assert not run_dir.exists()
    assert not _keys(fs, f"{BUCKET}/unlearning/{run_dir.name}")
