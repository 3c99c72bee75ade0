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
