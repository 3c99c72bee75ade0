"""MRBrainS18's scoring (``study/metrics/official.py``) against hand-computed cases and a
brute-force reference, and the native-grid predictions that it scores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from analysis.evaluate import read_truths, score_subjects, segment_native, summary_table, write_result
from analysis.summary import official_means
from study.cohort import study_split, synthetic
from study.cohort.preprocess import preprocess, to_native
from study.config import StudyConfig
from study.metrics.official import class_values, hd95, label_map_mae, score_labels, scored_labels

SPACING = (0.958, 0.958, 3.0)  # MRBrainS18's voxels, mm
AFFINE = np.diag([*SPACING, 1.0])


def _by_label(rows: list[dict]) -> dict[int, dict]:
    return {row["label"]: row for row in rows}


def _cube_volume(shape=(20, 20, 8), label: int = 1, at=(6, 6, 2), size=(6, 6, 4)) -> np.ndarray:
    volume = np.zeros(shape, dtype=np.uint8)
    volume[at[0] : at[0] + size[0], at[1] : at[1] + size[1], at[2] : at[2] + size[2]] = label
    return volume


def test_a_perfect_segmentation_scores_dice_1_hd95_0_and_vs_1():
    truth = _cube_volume(label=1)
    truth[2:5, 2:5, 1:3] = 3
    truth[14:18, 3:9, 4:7] = 8
    scores = _by_label(score_labels(truth, truth.copy(), AFFINE, "8class"))
    assert set(scores) == set(range(1, 9))
    for label in (1, 3, 8):
        assert (scores[label]["dice"], scores[label]["hd95_mm"], scores[label]["vs"]) == (1.0, 0.0, 1.0)
    for label in (2, 4, 5, 6, 7):  # in neither image: undefined, not perfect
        assert all(math.isnan(scores[label][m]) for m in ("dice", "hd95_mm", "vs"))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_one_voxel_shift_along_an_axis_is_that_axis_spacing(axis: int):
    truth = _cube_volume()
    result = np.roll(truth, 1, axis=axis)
    row = _by_label(score_labels(truth, result, AFFINE, "8class"))[1]
    assert row["hd95_mm"] == pytest.approx(SPACING[axis])
    # 6 x 6 x 4 voxels shifted by one: 5/6 (in-plane) or 3/4 (across slices) of them overlap
    assert row["dice"] == pytest.approx(5 / 6 if axis < 2 else 3 / 4)
    assert row["vs"] == 1.0  # the same volume


def test_a_label_predicted_but_absent_from_the_ground_truth_scores_dice_0():
    truth = _cube_volume(label=1)
    result = truth.copy()
    result[1:3, 1:3, 1] = 5  # CSF where the ground truth has none
    row = _by_label(score_labels(truth, result, AFFINE, "8class"))[5]
    assert row["dice"] == 0.0 and row["vs"] == 0.0
    assert math.isnan(row["hd95_mm"])  # a distance needs both masks


def test_ground_truth_9_and_10_take_both_images_out_whatever_is_predicted_there():
    truth = _cube_volume(label=1)
    truth[12:16, 12:16, 2:6] = 9
    truth[0:3, 15:19, 0:2] = 10
    clean = truth.copy()
    clean[truth >= 9] = 0
    reference = score_labels(truth, clean, AFFINE, "8class")
    rng = np.random.default_rng(0)
    for _ in range(3):
        result = clean.copy()
        unscored = truth >= 9
        result[unscored] = rng.integers(0, 11, unscored.sum())
        assert score_labels(truth, result, AFFINE, "8class") == reference
    # A prediction of 1 next to (not on) the masked region is a false positive
    result = clean.copy()
    result[11, 12:16, 2:6] = 1
    assert _by_label(score_labels(truth, result, AFFINE, "8class"))[1]["dice"] < 1.0


def test_the_4class_mode_merges_labels_as_the_study_does_and_names_each_class_by_its_first_label():
    assert class_values("4class") == (0, 1, 3, 5) and class_values("8class") == tuple(range(9))
    assert scored_labels("4class") == {1: "GM", 3: "WM", 5: "CSF"}
    truth = _cube_volume(label=2)  # basal ganglia: grey matter in 4-class mode
    truth[1:4, 1:4, 1:3] = 7  # cerebellum: background in 4-class mode
    result = _cube_volume(label=1)  # cortical grey matter where the truth says basal ganglia
    four = _by_label(score_labels(truth, result, AFFINE, "4class"))
    assert four[1]["dice"] == 1.0 and four[1]["hd95_mm"] == 0.0
    eight = _by_label(score_labels(truth, result, AFFINE, "8class"))
    assert eight[1]["dice"] == 0.0 and eight[2]["dice"] == 0.0 and eight[7]["dice"] == 0.0


def _brute_force_hd95(truth: np.ndarray, result: np.ndarray, affine: np.ndarray) -> float:
    """HD95 written out plainly: a boundary voxel has an in-plane neighbour (of 8) outside the
    mask, the image's outside counting as inside; every pair of boundary voxels measured."""

    def boundary(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, ((1, 1), (1, 1), (0, 0)), constant_values=True)
        x, y = mask.shape[:2]
        neighbours = [
            padded[1 + dx : 1 + dx + x, 1 + dy : 1 + dy + y] for dx in (-1, 0, 1) for dy in (-1, 0, 1)
        ]
        return mask & ~np.logical_and.reduce(neighbours)

    a = np.argwhere(boundary(truth)) @ affine[:3, :3].T
    b = np.argwhere(boundary(result)) @ affine[:3, :3].T
    distances = np.linalg.norm(a[:, None] - b[None], axis=-1)
    return max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95))


def test_hd95_equals_a_brute_force_computation_on_random_shapes_at_the_image_border():
    rng = np.random.default_rng(3)
    oblique = np.eye(4)
    angle = 0.4
    oblique[:3, :3] = np.array(
        [[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]]
    ) @ np.diag(SPACING)
    for trial in range(6):
        from scipy import ndimage

        field = ndimage.gaussian_filter(rng.random((18, 16, 5)), 1.5)
        truth = field > np.quantile(field, 0.6)
        result = np.roll(truth, rng.integers(-2, 3), axis=trial % 3) ^ (rng.random(truth.shape) < 0.03)
        affine = oblique if trial % 2 else AFFINE
        assert hd95(truth, result, affine) == pytest.approx(_brute_force_hd95(truth, result, affine))


def test_the_label_map_mae_counts_wrong_voxels_over_every_class():
    truth = np.array([[[0, 1, 3, 9]]], dtype=np.uint8)
    result = np.array([[[0, 3, 3, 5]]], dtype=np.uint8)
    # scored voxels 3 (the 9 is out), one wrong: 2 classes off by 1 each -> 2 / (3 voxels x 4 classes)
    assert label_map_mae(truth, result, "4class") == pytest.approx(2 / 12)


def test_means_over_subjects_leave_undefined_figures_out():
    rows = [
        {
            "model": "m",
            "subject": "a",
            "role": "retain",
            "label": 5,
            "name": "CSF",
            "dice": 0.6,
            "hd95_mm": 2.0,
        },
        {"model": "m", "subject": "b", "role": "retain", "label": 5, "name": "CSF", "dice": math.nan},
    ]
    scores = pd.DataFrame(rows).assign(vs=0.9, label_mae=0.1)
    means = official_means(scores)
    assert means["dice"].tolist() == [0.6] and means["hd95_mm"].tolist() == [2.0]
    assert summary_table(scores.drop(columns="model"))["dice"].tolist() == [0.6]


@pytest.fixture(scope="module")
def native_subject(cohort_root: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Subject 070 of the synthetic cohort: its images and its segm.nii.gz, on the native grid."""
    from study.cohort import read_subject

    image, _ = read_subject(cohort_root, "070")
    return image, read_truths(cohort_root, ("070",))["070"]


def test_a_result_nifti_reads_back_on_the_native_grid_and_the_truth_scores_perfectly(
    native_subject, tmp_path: Path
):
    _, truth_image = native_subject
    truth = np.asarray(truth_image.dataobj).astype(np.uint8)
    path = tmp_path / "070" / "result.nii.gz"
    write_result(path, truth, truth_image, "8class")
    back = nib.load(path)
    assert back.shape == truth.shape == synthetic.SHAPE
    assert np.allclose(back.affine, truth_image.affine) and back.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(back.dataobj), truth)
    assert back.header.get_zooms() == pytest.approx(SPACING, abs=1e-5)
    present = set(np.unique(truth)) - {0, 9, 10}
    scores = score_subjects(
        {"070": np.asarray(back.dataobj)}, {"070": truth_image}, {"070": "forget"}, "8class"
    )
    assert set(scores["label"]) == set(range(1, 9))
    perfect = scores[scores["label"].isin(present)]
    assert len(perfect) == len(present) and (perfect["dice"] == 1).all() and (perfect["hd95_mm"] == 0).all()
    assert (perfect["vs"] == 1).all() and (scores["label_mae"] == 0).all()


#: The native-grid Dice of a perfect segmentation on the input grid: 1 where the input grid is
#: the native one; at the demo's 16 x 64 x 64, what the lost resolution leaves (measured: GM
#: 0.792, WM 0.894, CSF 0.738; with align_corners=True, the other corner convention, 0.764,
#: 0.885, 0.698).
CEILINGS = {
    (48, 240, 240): {"GM": 0.999, "WM": 0.999, "CSF": 0.999},
    (16, 64, 64): {"GM": 0.78, "WM": 0.88, "CSF": 0.72},
}


@pytest.mark.parametrize("input_size", list(CEILINGS))
def test_to_native_undoes_the_preprocessing(native_subject, input_size):
    """The ground truth's own classes, as a model that segmented perfectly on the input grid
    would give them (one-hot "probabilities"), come back on the native grid where they were:
    exactly at the native size, close at the demo's (resolution lost, nothing moved)."""
    image, truth_image = native_subject
    truth = np.asarray(truth_image.dataobj).astype(np.uint8)
    _, classes = preprocess(image, truth, input_size, "4class")
    onehot = torch.nn.functional.one_hot(torch.tensor(classes.astype(np.int64)).clamp(max=3), 4)
    native = to_native(onehot.movedim(-1, 0).float(), truth.shape)
    assert tuple(native.shape) == truth.shape
    result = np.asarray(class_values("4class"), dtype=np.uint8)[native.numpy()]
    for row in score_labels(truth, result, truth_image.affine, "4class"):
        assert row["dice"] >= CEILINGS[input_size][row["name"]], row


def test_native_segmentations_are_the_same_in_a_ray_task_as_in_this_process(
    ray_local, tiny_cohort, tiny_model
):
    from study.launch import segment_on_worker
    from study.run.cluster import remote

    config = StudyConfig(preset="smoke", model_depth=10, model_width=0.125, cpus_per_trial=1)
    state = tiny_model().state_dict()
    shapes = {s: (24, 20, 6) for s in tiny_cohort.labelled}
    here = segment_native(config, state, tiny_cohort, shapes)
    task = remote(config, segment_on_worker).remote(config, state, ray_local.put(tiny_cohort), shapes)
    there = ray_local.get(task)
    assert set(here) == set(there) == set(tiny_cohort.labelled)
    for subject in here:
        assert here[subject].shape == (24, 20, 6) and here[subject].dtype == np.uint8
        assert set(np.unique(here[subject])) <= {0, 1, 3, 5}  # MRBrainS18 values of the 4 classes
        assert np.array_equal(here[subject], there[subject])


def test_the_study_scores_its_three_models_on_the_native_grid(smoke_study):
    """``official_scores.parquet``: original, retrain and recommended on every subject and
    label; their predictions on disk; the report's tables on both grids."""
    run = smoke_study.run
    assert "== scores: MRBrainS18's Dice" in smoke_study.output
    scores = pd.read_parquet(run.official_scores_file)
    split = study_split(smoke_study.config)[1]
    subjects = split.training + split.holdout
    assert len(scores) == 3 * len(subjects) * 3  # models x subjects x (GM, WM, CSF)
    assert set(scores["model"]) == {"original", "retrain", "recommended"}
    assert set(scores["label"]) == {1, 3, 5} and set(scores["role"]) == {"forget", "retain", "holdout"}
    defined = scores["dice"].dropna()
    assert len(defined) >= len(scores) // 2 and defined.between(0, 1).all()
    assert (scores["hd95_mm"].dropna() >= 0).all() and scores["vs"].dropna().between(0, 1).all()
    for model in ("original", "retrain", "recommended"):
        for subject in subjects:
            result = nib.load(run.predictions_dir / model / subject / "result.nii.gz")
            assert result.shape == synthetic.SHAPE and set(np.unique(np.asarray(result.dataobj))) <= {
                0,
                1,
                3,
                5,
            }
    markdown = run.report_markdown.read_text()
    assert "retain Dice, input grid" in markdown and "retain HD95 (mm), native" in markdown
    assert "Per label, on the native grid (MRBrainS18's scoring):" in markdown
    assert "| Dice GM, native " in markdown and "HD95 CSF (mm), native" in markdown


def _evaluate(argv: list[str], capsys) -> tuple[int, str, str]:
    from analysis.evaluate import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_analysis_evaluate_writes_one_models_predictions_and_scores(smoke_study, cache_env, tmp_path, capsys):
    out = tmp_path / "original"
    code, said, _ = _evaluate([str(smoke_study.run_dir), "--model", "original", "--out", str(out)], capsys)
    assert code == 0 and f"predictions and scores.csv in {out}" in said
    scores = pd.read_csv(out / "scores.csv", dtype={"subject": str})  # ids such as 070 are text
    assert list(scores.columns) == ["subject", "role", "label", "name", "dice", "hd95_mm", "vs", "label_mae"]
    assert len(scores) == 3 * scores["subject"].nunique() and len(list(out.glob("*/result.nii.gz"))) == 10
    # The same model scored at the end of the study: the same figures
    study_scores = pd.read_parquet(smoke_study.run.official_scores_file)
    original = study_scores[study_scores["model"] == "original"].drop(columns="model")
    merged = scores.merge(original, on=["subject", "label"], suffixes=("", "_study"))
    assert len(merged) == len(scores)
    assert np.allclose(merged["dice"], merged["dice_study"], equal_nan=True)
    assert np.allclose(merged["hd95_mm"], merged["hd95_mm_study"], equal_nan=True)


def test_analysis_evaluate_refuses_bad_input_in_one_line(smoke_study, cache_env, tmp_path, capsys):
    run_dir = str(smoke_study.run_dir)
    trial = smoke_study.trials["trial_id"].iloc[0]
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("config.toml", "study.json"):
        (unfinished / name).write_bytes((smoke_study.run_dir / name).read_bytes())
    identity = json.loads((unfinished / "study.json").read_text())
    (unfinished / "study.json").write_text(json.dumps({**identity, "finished": ""}))
    (tmp_path / "a-file").write_text("")
    cases = [
        ([run_dir, "--model", "nosuchtrial@2"], "no trial nosuchtrial"),
        ([run_dir, "--model", f"{trial}@7"], f"trial {trial} reported epochs 1..2, not 7"),
        ([run_dir, "--model", "best"], "give original, retrain, recommended or TRIAL_ID@EPOCH"),
        ([run_dir, "--model", "original", "--out", str(tmp_path / "a-file")], "is a file"),
        ([str(unfinished)], "the study has not finished"),
    ]
    for argv, message in cases:
        code, said, err = _evaluate(argv, capsys)
        assert code == 2, (argv, said, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "unfinished" / "predictions").exists()
