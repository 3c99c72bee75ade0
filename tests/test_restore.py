"""What ``--resume`` reads: Tune's saved state, repaired before ``Tuner.restore`` (no stale
decision, no trial ended short, a cut-off file refused by name), and a storage folder that
takes each file whole. The kills that need these are in test_reliability.py and test_cluster.py."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow
import pytest

from study.config import StudyError
from study.run.storage import ExperimentStorage
from trainables.checkpoints import repair_saved_state


def _saved_state(folder: Path, trials: list[tuple[str, str, int, float]], decisions: dict) -> Path:
    """An experiment state as Tune 2.60 writes it (the parts ``repair_saved_state`` reads):
    ``trials`` as (id, status, last epoch, diverged)."""
    pairs = [
        [
            json.dumps({"trial_id": t, "status": status, "config": {}}),
            json.dumps({"last_result": {"epoch": epoch, "diverged": diverged}}),
        ]
        for t, status, epoch, diverged in trials
    ]
    state = {"trial_data": pairs, "runner_data": {"_cached_trial_decisions": decisions}, "stats": {}}
    folder.mkdir(parents=True)
    path = folder / "experiment_state-2026-12-02_10-00-00.json"
    path.write_text(json.dumps(state))
    (folder / "experiment_state-2026-12-01_10-00-00.json").write_text("{}")  # an older session's
    return path


def test_the_state_restore_reads_holds_no_stale_decision_and_no_trial_ended_short(tmp_path):
    storage = ExperimentStorage(str(tmp_path), "run")
    trials = [
        ("short", "TERMINATED", 4, 0.0),
        ("done", "TERMINATED", 12, 0.0),
        ("blew", "TERMINATED", 3, 1.0),
    ]
    trials.append(("failed", "ERROR", 4, 0.0))
    path = _saved_state(tmp_path / "run", trials, {"failed": "STOP"})
    assert storage.newest_experiment_state() == str(path)

    repairs = repair_saved_state(storage, max_epochs=12)
    assert repairs.stale_decisions == {"failed": "STOP"} and repairs.reopened == ["short"]
    state = json.loads(path.read_text())
    assert state["runner_data"]["_cached_trial_decisions"] == {}
    statuses = {json.loads(a)["trial_id"]: json.loads(a)["status"] for a, _ in state["trial_data"]}
    assert statuses == {"short": "PENDING", "done": "TERMINATED", "blew": "TERMINATED", "failed": "ERROR"}
    assert not list(path.parent.glob("*.partial-*"))  # written whole, nothing left beside it
    assert repair_saved_state(storage, max_epochs=12) == type(repairs)()  # nothing left to repair

    path.write_text(path.read_text()[:100])
    with pytest.raises(StudyError, match=f"Tune's experiment state {path} is cut off or damaged"):
        repair_saved_state(storage, max_epochs=12)


def test_a_file_written_to_a_storage_folder_appears_whole_or_not_at_all(tmp_path):
    storage = ExperimentStorage(str(tmp_path), "run")
    fs, root = storage.filesystem()
    path = f"{root}/state.json"
    storage.replace_file(path, b'{"epoch": 1}')
    stream = fs.open_output_stream(path)
    stream.write(b'{"epoch": 2, "trials": [')  # a kill now would leave the previous file
    assert Path(path).read_bytes() == b'{"epoch": 1}'
    stream.write(b"]}")
    stream.close()
    assert Path(path).read_bytes() == b'{"epoch": 2, "trials": []}'
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    # Tune copies whole folders (checkpoints, its experiment folder) through it.
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "model.pt").write_bytes(b"x" * 100_000)
    pyarrow.fs.copy_files(str(source), f"{root}/copy", destination_filesystem=fs)
    assert (tmp_path / "copy" / "sub" / "model.pt").read_bytes() == b"x" * 100_000


def test_the_pruner_works_beside_tunes_event_loop_one_pass_at_a_time(tmp_path, monkeypatch):
    import threading
    import time

    from trainables import checkpoints

    started, release, passes = threading.Event(), threading.Event(), []

    def slow_pass(storage):  # a pass over a large study on a bucket: it takes its time
        passes.append(storage)
        started.set()
        assert release.wait(timeout=30)
        time.sleep(0.05)
        return 0

    monkeypatch.setattr(checkpoints, "prune_checkpoints", slow_pass)
    storage = ExperimentStorage(str(tmp_path), "experiment")
    pruner = checkpoints.CheckpointPruner(storage, every_s=0.0)
    first = time.monotonic()
    pruner.on_trial_save(1, [], None)  # returns while the pass runs: it would hang here otherwise
    assert started.wait(timeout=30)
    pruner.on_trial_save(2, [], None)  # a pass in flight: no second one
    release.set()
    pruner.on_experiment_end([])  # waits for the pass in flight
    longest = time.monotonic() - first  # the pass took at most this
    assert passes == [storage]
    pruner.on_trial_save(3, [], None)  # within 19 x its duration (at least 0.95 s): not yet
    pruner.wait()
    assert len(passes) == 1
    time.sleep(19 * longest + 0.1)
    pruner.on_trial_save(4, [], None)
    pruner.wait()
    assert len(passes) == 2


def test_a_finished_trial_keeps_in_tunes_state_its_epoch_objectives_and_checkpoint_and_its_statistics_restart(
    tmp_path,
):
    """``CompactFinishedTrials`` on a real Tune ``Trial``: the running statistics and the
    figures out, the rest read back as Tune reads it; should the trial run again, Tune keeps
    statistics from its next result on."""
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint
    from ray.tune.experiment import Trial
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    from study.run.results import FIGURES
    from trainables.tune_state import compact

    trial = Trial("__fake", config={"lr": 0.1, "strategy": "noisy_label"}, stub=True, trial_id="t1")
    figures = json.dumps({f"figure_{i}": 0.123456789 * i for i in range(30)})
    for epoch in (1, 2):
        result = {"epoch": epoch, "forget_drop": 0.1 * epoch, "diverged": 0.0, FIGURES: figures}
        trial.update_last_result(result | {"config": trial.config, "trial_id": "t1", "done": epoch == 2})
        checkpoint = Checkpoint.from_directory(str(tmp_path / f"checkpoint_00000{epoch}"))
        trial.run_metadata.checkpoint_manager.register_checkpoint(
            _TrainingResult(checkpoint, dict(trial.last_result))
        )
    before = len(trial.get_json_state()[1])

    compact(trial)
    saved = trial.get_json_state()[1]
    metadata = _loads_with_cloudpickle(saved)
    assert len(saved) < before / 2
    assert metadata["metric_analysis"] == {} and metadata["metric_n_steps"] == {}
    assert metadata["last_result"]["epoch"] == 2 and metadata["last_result"]["config"] == trial.config
    assert FIGURES not in metadata["last_result"]
    manager = metadata["checkpoint_manager"]
    assert [r.checkpoint.path for r in manager.best_checkpoint_results] == [
        str(tmp_path / "checkpoint_000001"),
        str(tmp_path / "checkpoint_000002"),
    ]
    assert manager.latest_checkpoint_result.metrics["epoch"] == 2
    assert all(not {FIGURES, "config"} & r.metrics.keys() for r in manager.best_checkpoint_results)

    trial.update_last_result({"epoch": 3, "forget_drop": 0.5, "diverged": 0.0})  # a reopened trial
    assert trial.metric_analysis["forget_drop"]["last"] == 0.5
    assert trial.metric_analysis["forget_drop"]["avg"] == 0.5  # from the next result on


@pytest.mark.parametrize("moved", [True, False])
def test_a_finished_trials_files_are_uploaded_once_not_at_every_save_of_tunes_state(
    ray_local, tmp_path, monkeypatch, moved: bool
):
    """Tune uploads its whole staging folder at every save (here one every 0.2 s); ``FinishedTrialFiles`` uploads each finished trial's ``result.json`` once more
    after the trial ends and takes it out of that folder (without it, a finished trial's
    file is uploaded again at every later save), and the storage still has every
    trial's every result."""
    import time
    from collections import defaultdict

    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from study.bench.scale import _bare_trial  # importable by Ray's workers
    from study.run import storage as storage_module
    from trainables.tune_state import FinishedTrialFiles

    uploads: dict[str, list[float]] = defaultdict(list)  # trial folder -> when its result.json was written
    opened = storage_module.WholeFiles.open_output_stream

    def counted(self, path: str, metadata):
        if path.endswith("result.json"):
            uploads[Path(path).parent.name].append(time.monotonic())
        return opened(self, path, metadata)

    ended: dict[str, float] = {}

    class Ends(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            ended[Path(trial.local_path).name] = time.monotonic()

    monkeypatch.setattr(storage_module.WholeFiles, "open_output_stream", counted)
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0.2")  # a save every 0.2 s
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    storage = ExperimentStorage(str(tmp_path / "results"), "files")
    fs, root = storage.filesystem()
    callbacks = [JsonLoggerCallback(), Ends(), *([FinishedTrialFiles()] if moved else [])]
    tuner = tune.Tuner(
        tune.with_resources(_bare_trial, {"CPU": 1}),
        param_space={"seconds": 0.1, "reports": 3, "busy": False},
        tune_config=tune.TuneConfig(num_samples=8, reuse_actors=True, max_concurrent_trials=2),
        run_config=tune.RunConfig(
            name="files", storage_path=root, storage_filesystem=fs, callbacks=callbacks, verbose=0
        ),
    )
    grid = tuner.fit()
    assert len(grid) == 8 and not grid.errors
    for result in grid:  # read back from the storage: every trial's 3 results
        assert list(result.metrics_dataframe["epoch"]) == [1, 2, 3]
    assert uploads.keys() == ended.keys() and len(ended) == 8
    after = {folder: sum(t > ended[folder] for t in times) for folder, times in uploads.items()}
    first = min(ended, key=ended.get)
    if moved:
        # The move, and any save that came before it: not the saves that came after.
        assert max(after.values()) <= 3
        session = Path(ray_local._private.worker._global_node.get_session_dir_path())
        staging = list(session.rglob("driver_artifacts"))  # Tune's staging folder on the driver
        moved_out = sorted(ended, key=ended.get)[:-2]  # the last two may end in Tune's last step
        assert staging and not [s / f for s in staging for f in moved_out if (s / f).exists()]
    else:
        assert after[first] >= 4  # the first trial's file again at each later save


def test_a_save_in_flight_is_seen_from_the_threads_of_the_driver(tmp_path):
    """``uploading`` asks the threads, since a trial's copy of Tune's syncer is not the one
    that uploads: a real upload of Ray's syncer, held in the file system, is seen."""
    import threading

    from ray.train._internal.syncer import _BackgroundProcess

    from trainables.tune_state import uploading

    release = threading.Event()
    process = _BackgroundProcess(lambda: release.wait(10))
    assert not uploading()
    process.start()
    try:
        assert uploading()
    finally:
        release.set()
        process.wait()
    assert not uploading()
