"""``python -m study.bench``'s parts on tiny inputs: what they count and how they divide."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from search_spaces import STRATEGIES, starting_point
from study.bench import data, epoch, search
from study.bench.__main__ import main
from study.config import load_config
from study.metrics import measure_reference
from trainables.noisy_label import NoisyLabel
from trainables.trial import TrialSpec, run_trial


def test_the_epoch_bench_times_a_real_step_and_counts_its_flops():
    row = epoch.measure("demo", epoch.Variant("fp32", channels_last=False, cudnn_benchmark=False), 1, 1)
    assert row["size"] == "demo" and row["device"] == "cpu" and row["memory"] == "process peak RSS"
    assert 0 < row["eval_s_per_subject"] < row["train_s_per_subject"] < 60
    # A ResNet-10 x 0.25 step on 2 x 3 x 16 x 64 x 64 volumes: a few GFLOP, forward and backward.
    assert 1e-3 < row["tflop_per_step"] < 1e-2
    assert row["achieved_tflops"] == pytest.approx(row["tflop_per_step"] / (2 * row["train_s_per_subject"]))
    assert math.isnan(row["mfu"])  # no known peak for a CPU
    assert [v.name for v in epoch.variants(cuda=False)] == [
        "fp32",
        "fp32+channels_last",
        "bf16",
        "bf16+channels_last",
    ]
    assert len(epoch.variants(cuda=True)) == 8


def test_the_data_bench_counts_every_decode_and_the_passes_it_makes(tmp_path: Path, monkeypatch):
    log = tmp_path / "decodes.tsv"
    monkeypatch.setenv(data.LOG_VARIABLE, str(log))
    monkeypatch.setattr(nib, "load", nib.load)  # restored after the test
    root = tmp_path / "cohort"
    for subject in ("1", "070"):
        (root / subject / "pre").mkdir(parents=True)
        volume = nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4))
        nib.save(volume, root / subject / "pre" / "reg_T1.nii.gz")
        nib.save(volume, root / subject / "segm.nii.gz")
    (root / "9" / "pre").mkdir(parents=True)  # a subject the study does not use: not the cohort
    nib.save(volume, root / "9" / "pre" / "reg_T1.nii.gz")
    data.count_decodes()
    for path in [root / "1" / "pre" / "reg_T1.nii.gz"] * 2 + [root / "070" / "pre" / "reg_T1.nii.gz"]:
        nib.load(path)
    for path in (root / "1" / "segm.nii.gz", root / "070" / "segm.nii.gz"):
        nib.load(path)
    rows = {row["files"]: row for row in data.decode_rows(log, root, driver=-1)}
    assert rows["images"]["in the cohort"] == 2 and rows["images"]["decodes"] == 3
    assert rows["images"]["passes"] == pytest.approx(1.5) and rows["labels"]["passes"] == pytest.approx(1.0)
    assert rows["images"]["decodes outside the driver"] == 3  # pid -1 is nobody's


def test_a_search_runs_its_budget_from_the_hand_picked_start(tiny_cohort, tiny_model):
    original = tiny_model()
    reference = measure_reference(
        {"original": original, "retrain": original}, tiny_cohort, torch.device("cpu")
    )[0]
    config = load_config(
        "smoke", overrides={"run_dir": "unused", "max_epochs": 1, "strategies": ["noisy_label"]}
    )
    state = {k: v.clone() for k, v in original.state_dict().items()}
    s = search.Setting(config, tiny_cohort, state, reference)
    found = search.search(s, "noisy_label", "tpe", seed=0, budget=3, in_flight=2)
    assert len(found["points"]) == 3 and 0 < found["seconds_per_suggestion"] < 1
    start = {**starting_point(STRATEGIES["noisy_label"].search), "trial_number": 0, "strategy": "noisy_label"}
    first = run_trial(TrialSpec.of(config, NoisyLabel, start), tiny_cohort, state, reference).last
    assert found["points"][0] == [first["forget_drop"], first["retain_kept"]]  # the start ran first
    again = search.search(s, "noisy_label", "tpe", seed=0, budget=3, in_flight=2)
    assert again["points"] == found["points"]  # seeded: the same search


def test_a_search_keeps_its_trials_in_flight_as_tune_keeps_its_slots_busy(monkeypatch):
    import optuna

    running_at_tell: list[int] = []
    tell = optuna.Study.tell

    def counting(self, trial, *args, **kwargs):
        running_at_tell.append(
            len(self.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
        )
        return tell(self, trial, *args, **kwargs)

    monkeypatch.setattr(optuna.Study, "tell", counting)
    monkeypatch.setattr(search, "_trial", lambda s, strategy, params: (params["lr"] * 1e3, 1.0))
    for sampler in ("tpe", "gp"):
        running_at_tell.clear()
        found = search.search(None, "noisy_label", sampler, seed=0, budget=6, in_flight=3)
        assert running_at_tell == [3, 3, 3, 3, 2, 1] and len(found["points"]) == 6, sampler


def test_the_overhead_table_divides_slot_time_into_the_trials_parts():
    import pandas as pd

    from study.bench import overhead

    # Two workers over a 10 s search phase: worker 1 runs two trials with a 1 s gap between.
    parts = {"seconds_setup": 0.5, "seconds_train": 2.0, "seconds_eval": 1.0, "seconds_snapshot": 0.1}
    parts |= {"seconds_write": 0.7}  # in the background: not a part of a trial's span
    trials = pd.DataFrame(
        [
            {
                "pid": 1,
                "entered_at": 101.0,
                "ended_at": 105.0,
                "span": 4.0,
                "seconds_report": 0.4,
                "peak_rss_mb": 900.0,
            },
            {
                "pid": 1,
                "entered_at": 106.0,
                "ended_at": 110.0,
                "span": 4.0,
                "seconds_report": 0.4,
                "peak_rss_mb": 950.0,
            },
            {
                "pid": 2,
                "entered_at": 102.0,
                "ended_at": 110.0,
                "span": 8.0,
                "seconds_report": 0.4,
                "peak_rss_mb": 800.0,
            },
        ]
    ).assign(**parts)
    phases = {"run_experiment": 10.0, "run_experiment started at": 100.0, "train_or_load_baselines": 3.0}
    phases |= {"run_experiment driver CPU": 1.5}
    bare = {"trial:a": 2.0, "trial:b": 2.5, "trial:c": 3.0, "model:original": 5.0, "rerun:a seed 0": 1.0}
    rows = {
        row["part"]: row for row in overhead.overhead_rows(trials, phases, total=20.0, slots=2, bare=bare)
    }
    assert rows["trials: train"]["seconds"] == 6.0 and rows["trials: train"]["share of slot time"] == 0.3
    assert rows["trials: gaps between trials on a worker"]["seconds"] == 1.0
    assert rows["trials: checkpoint write and report, in the background"]["seconds"] == pytest.approx(2.1)
    assert rows["workers: from the experiment's start to their first trial"]["seconds"] == 3.0  # 1 + 2
    assert rows["trial compute share (train + eval) / span"]["ratio"] == pytest.approx(9.0 / 16.0)
    assert rows["slot use: sum of trial spans / (slots x search phase)"]["ratio"] == pytest.approx(
        16.0 / 20.0
    )
    assert rows["bare (no Ray, 1 thread): 3 trials"]["seconds"] == 7.5
    assert rows["bare (no Ray, 1 thread): 1 models of the original recipe"]["seconds"] == 5.0
    assert rows["bare (no Ray, 1 thread): 1 reruns of the recommendation"]["seconds"] == 1.0
    assert rows["ideal: every model's bare seconds / 2 slots"]["seconds"] == 6.75  # 13.5 s of work
    assert rows["whole run / ideal"]["ratio"] == pytest.approx(20.0 / 6.75)
    # 9 s of training and evaluation side by side, against 7.5 s one at a time.
    assert rows["trials' train + eval in the study / their bare seconds"]["ratio"] == pytest.approx(1.2)
    assert rows["search phase / its ideal (the trials' bare seconds / slots)"]["ratio"] == pytest.approx(
        10 / 3.75
    )
    assert rows["peak RSS of a trial worker (MB)"]["ratio"] == 950.0


def test_the_overhead_benchs_ideal_trains_every_model_of_the_study_again(smoke_study, cache_env):
    from analysis.study_state import load_study
    from study.bench import overhead
    from study.cohort import open_cohort, with_other_forget

    config = smoke_study.config
    other = with_other_forget(open_cohort(config), config.other_forget)
    chosen = load_study(smoke_study.run_dir).recommendation
    reruns = [(chosen.trial_id, chosen.epoch, other, True)]  # as rerun_recommendations was asked
    bare = overhead.bare_work(smoke_study.run_dir, reruns, [(chosen.trial_id, chosen.epoch)])

    assert all(seconds > 0 for seconds in bare.values())
    by_kind = {
        kind: sorted(k.partition(":")[2] for k in bare if k.startswith(kind)) for kind in overhead.KINDS
    }
    other_set = ",".join(other.split.forget)
    assert by_kind["model"] == ["original", "retrain", f"retrain without {other_set}"]
    assert by_kind["trial"] == sorted(smoke_study.trials["trial_id"].unique())  # 4, each its own
    assert by_kind["replay"] == [chosen.trial_id]
    # The reruns the study ran and wrote, one for one: 2 seeds on each forget set, 2 bn_modes.
    seeds, modes = smoke_study.run.read_seed_runs(), smoke_study.run.read_bn_mode_runs()
    ran = {f"{chosen.trial_id} seed {s} on {f}" for s, f in zip(seeds["seed"], seeds["forget"], strict=True)}
    ran |= {f"{chosen.trial_id} bn_mode {m} on {','.join(config.forget)}" for m in modes["bn_mode"]}
    assert set(by_kind["rerun"]) == ran and len(ran) == 6


# The epoch bench where Ray, pandas and pyarrow cannot be imported, as on a GPU machine with
# PyTorch and pure-Python wheels only.
_WITHOUT = """
import sys
for name in ("ray", "pandas", "pyarrow"):
    sys.modules[name] = None  # every import of them now fails
from study.bench.__main__ import main
code = main(sys.argv[1:])
loaded = sorted(m for m in ("ray", "pandas", "pyarrow") if sys.modules.get(m) is not None)
print("loaded:", loaded)
sys.exit(code)
"""


def test_the_epoch_bench_runs_without_ray_pandas_or_pyarrow(tmp_path: Path, capsys):
    import json
    import subprocess
    import sys

    out = tmp_path / "epoch.json"
    argv = ["--out", str(out), "epoch", "--sizes", "demo", "--steps", "1", "--variants", "fp32"]
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT, *argv], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded: []" in done.stdout and "train_s_per_subject" in done.stdout
    record = json.loads(out.read_text())
    assert [row["variant"] for row in record["rows"]] == ["fp32"] and record["rows"][0][
        "speedup_vs_fp32"
    ] == 1.0
    assert record["command"].startswith("python -m study.bench --out") and record["machine"]["cpus"] >= 1
    assert main(["epoch", "--sizes", "huge"]) == 2  # a user's error: one line, exit 2
    assert capsys.readouterr().err.strip().startswith("error: unknown size(s) huge")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux resets a process's peak memory")
def test_a_reused_workers_next_trial_reports_its_own_peak_memory():
    from trainables.tune_trainable import PeakMemory

    first = PeakMemory()  # a trial starts in a worker
    held = np.ones(300 * 2**20 // 8)  # 300 MiB resident while it runs
    first_peak = first.peak_mb()
    del held  # it ends; Tune hands the same worker the next trial
    second = PeakMemory()
    assert first.per_trial and second.per_trial
    assert first_peak - second.peak_mb() > 250  # the first trial's 300 MiB are not the second's


def test_the_scale_bench_sets_the_studys_overhead_per_trial_beside_a_bare_tune_runs(
    ray_local, cache_env, tmp_path: Path, capsys
):
    import json

    out = tmp_path / "scale.json"
    argv = ["--out", str(out), "scale", "--trials", "4,6", "--slots", "2", "--bare", "sleep,busy"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "overhead_s_per_trial" in printed and "overhead_ratio" in printed
    record = json.loads(out.read_text())
    rows = {(r["run"], r["trials"]): r for r in record["rows"]}
    assert set(rows) == {
        *((kind, n) for kind in ("study", "bare Tune", "bare Tune (busy)") for n in (4, 6)),
        ("extrapolated", 10_000),
    }
    for n in (4, 6):
        study, bare, busy = rows["study", n], rows["bare Tune", n], rows["bare Tune (busy)", n]
        # The bare trials pass the study's mean compute time.
        assert (
            0
            < study["compute_s_per_trial"]
            == bare["compute_s_per_trial"]
            == busy["compute_s_per_trial"]
            < 10
        )
        for row in (study, bare, busy):
            assert row["wall_s"] > row["minimum_s"] == pytest.approx(n * row["compute_s_per_trial"] / 2)
            assert row["state_saves"] >= 1 and row["driver_cpu_s"] > 0 and row["driver_peak_rss_mb"] > 50
        # A finished trial keeps about what a bare one does in Tune's state: no statistics of
        # its figures (it kept twice as much before).
        assert 1000 < study["state_bytes_per_trial"] < 1.25 * bare["state_bytes_per_trial"]
        assert study["overhead_s_per_trial"] > bare["overhead_s_per_trial"] > 0
        assert study["trial_span_s"] >= study["compute_s_per_trial"] and study["between_trials_s"] > 0
    study = rows["study", 6]
    for key, kind in (("overhead_ratio", "bare Tune"), ("overhead_ratio_busy", "bare Tune (busy)")):
        assert record[key] == pytest.approx(
            study["overhead_s_per_trial"] / rows[kind, 6]["overhead_s_per_trial"]
        )
    assert record["minimum_ratio"] == study["minimum_ratio"] > 1
    assert record["state_bytes_per_trial"] == study["state_bytes_per_trial"]
    assert rows["extrapolated", 10_000]["state_bytes"] == pytest.approx(
        10_000 * study["state_bytes_per_trial"]
    )
    assert main(["scale", "--trials", "4", "--slots", "8"]) == 2  # not the Ray this process has
    assert "has 2 CPUs" in capsys.readouterr().err
    assert main(["scale", "--trials", "4", "--slots", "2", "--bare", "nap"]) == 2
    assert "--bare: unknown nap; choose from sleep, busy" in capsys.readouterr().err
