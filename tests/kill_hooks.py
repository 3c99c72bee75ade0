"""A Tune callback for the reliability tests, named in a study's ``tune_callbacks``: it
kills a trial's worker at one chosen moment, once (a marker file remembers it did)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import ray
from ray.tune import Callback


class KillAfterCheckpointResult(Callback):
    """Kills the worker of the first trial whose report for epoch ``KILL_AT_EPOCH`` carries
    a checkpoint, the moment the driver receives it: Tune has the result and is about to
    save the checkpoint, and the save never returns. Writes the trial's id to ``KILL_MARKER``
    and never kills again while that file exists (a resumed study keeps the callback)."""

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        marker = Path(os.environ["KILL_MARKER"])
        if marker.exists() or result.get("epoch") != int(os.environ["KILL_AT_EPOCH"]):
            return
        if not result.get("should_checkpoint"):
            return
        marker.write_text(trial.trial_id)
        worker = trial.temporary_state.ray_actor
        ray.kill(worker)
        # Return once it is dead, so that the save Tune schedules next fails every time.
        for _ in range(100):
            try:
                ray.get(worker.__ray_ready__.remote(), timeout=10)
            except ray.exceptions.RayActorError:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the worker of trial {trial.trial_id} outlived ray.kill")
