"""The synthetic writer and the MRBrainS18 reader, through real NIfTI files on disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from study.cohort import (
    IGNORE_LABEL,
    Cohort,
    Split,
    find_subjects,
    load_cohort,
    preprocess,
    read_subject,
    resolve_split,
    synthetic,
    with_forget,
    with_other_forget,
)
from study.config import StudyError


def test_synthetic_cohort_has_mrbrains18_layout_geometry_and_labels(cohort_root: Path):
    assert find_subjects(cohort_root) == sorted(synthetic.TRAINING_IDS + synthetic.HOLDOUT_IDS)
    for name in ("pre/reg_T1.nii.gz", "pre/reg_IR.nii.gz", "pre/FLAIR.nii.gz", "segm.nii.gz"):
        image = nib.load(cohort_root / "070" / name)
        assert image.shape == (240, 240, 48)
        np.testing.assert_allclose(image.header.get_zooms(), (0.958, 0.958, 3.0), rtol=1e-5)
        np.testing.assert_allclose(image.affine, synthetic.affine())
    labels = np.asarray(nib.load(cohort_root / "070" / "segm.nii.gz").dataobj)
    assert set(np.unique(labels)) <= set(range(10))
    assert {1, 2, 3, 5, 6} <= set(np.unique(labels))  # GM, basal ganglia, WM, both CSFs


def test_some_synthetic_subjects_have_an_infarct_that_the_loader_ignores(cohort_root: Path):
    infarcts = {}
    for subject in synthetic.TRAINING_IDS + synthetic.HOLDOUT_IDS:
        labels = np.asarray(nib.load(cohort_root / subject / "segm.nii.gz").dataobj)
        infarcts[subject] = int((labels == 9).sum())
        assert 10 not in labels
    assert {s for s, n in infarcts.items() if n} == {"7", "14", "148"}  # a forget and two retain subjects
    assert all(1000 < n < 3000 for n in infarcts.values() if n)  # about 3 to 8 cm^3
    images, labels = synthetic.make_subject("148")
    t1, flair, infarct, wm = images["T1"], images["FLAIR"], labels == 9, labels == 3
    assert t1[infarct].mean() < t1[wm].mean() and flair[infarct].mean() > flair[wm].mean()
    image = np.stack([images[m] for m in ("T1", "IR", "FLAIR")]).astype(np.float32)
    _, merged = preprocess(image, labels, (16, 64, 64), "4class")
    assert set(np.unique(merged)) == {0, 1, 2, 3, IGNORE_LABEL}


def test_reader_returns_what_the_writer_wrote(cohort_root: Path):
    images, labels = synthetic.make_subject("148")
    image, read_labels = read_subject(cohort_root, "148")
    assert image.shape == (3, 240, 240, 48) and image.dtype == np.float32
    np.testing.assert_array_equal(image[0], images["T1"])
    np.testing.assert_array_equal(image[2], images["FLAIR"])
    np.testing.assert_array_equal(read_labels, labels)


def test_subjects_are_deterministic_and_distinct():
    first, first_labels = synthetic.make_subject("4")
    again, again_labels = synthetic.make_subject("4")
    other, other_labels = synthetic.make_subject("5")
    np.testing.assert_array_equal(first["IR"], again["IR"])
    np.testing.assert_array_equal(first_labels, again_labels)
    assert (first_labels != other_labels).mean() > 0.02
    assert not np.array_equal(first["T1"], other["T1"])


def test_tissue_contrast_is_plausible():
    images, labels = synthetic.make_subject("7")
    t1, flair = images["T1"].astype(float), images["FLAIR"].astype(float)
    wm, gm, csf, lesion = (labels == 3), (labels == 1), (labels == 5), (labels == 4)
    assert t1[wm].mean() > t1[gm].mean() > t1[csf].mean()
    assert flair[csf].mean() < flair[gm].mean()
    if lesion.any():
        assert flair[lesion].mean() > flair[wm].mean()


def test_rewrite_is_skipped_when_the_cohort_is_complete(tmp_path: Path):
    root = synthetic.write_cohort(tmp_path / "cohort", subjects=("1",))
    stamp = (root / "1" / "segm.nii.gz").stat().st_mtime_ns
    synthetic.write_cohort(tmp_path / "cohort", subjects=("1",))
    assert (root / "1" / "segm.nii.gz").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    ("label_mode", "expected"),
    [
        ("4class", [0, 1, 1, 2, 2, 3, 3, 0, 0, IGNORE_LABEL, IGNORE_LABEL]),
        ("8class", [0, 1, 2, 3, 4, 5, 6, 7, 8, IGNORE_LABEL, IGNORE_LABEL]),
    ],
)
def test_label_merge(label_mode: str, expected: list[int]):
    labels = np.arange(11, dtype=np.uint8).reshape(11, 1, 1)  # (X, Y, Z): one voxel per label
    image = np.ones((3, 11, 1, 1), dtype=np.float32)
    _, merged = preprocess(image, labels, (1, 1, 11), label_mode)
    assert merged.shape == (1, 1, 11)  # (D, H, W) = (Z, Y, X)
    assert merged[0, 0].tolist() == expected


def _write_subject(folder: Path, labels: np.ndarray) -> None:
    """A subject in MRBrainS18's layout: three random modalities and ``labels`` as segm.nii.gz."""
    rng = np.random.default_rng(0)
    for name in ("pre/reg_T1.nii.gz", "pre/reg_IR.nii.gz", "pre/FLAIR.nii.gz"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        nib.save(
            nib.Nifti1Image(rng.uniform(100, 200, labels.shape).astype(np.float32), np.eye(4)), folder / name
        )
    nib.save(nib.Nifti1Image(labels, np.eye(4)), folder / "segm.nii.gz")


def test_infarction_and_other_read_back_as_ignored_through_the_loader(tmp_path: Path):
    labels = np.arange(12, dtype=np.uint8).reshape(3, 2, 2) % 11  # (X, Y, Z): 0..10, then 0
    _write_subject(tmp_path / "a", labels)
    _write_subject(tmp_path / "b", np.zeros_like(labels))
    split = resolve_split(find_subjects(tmp_path), ["a"], None, [], "test")
    for mode, classes in (("4class", [0, 1, 1, 2, 2, 3, 3, 0, 0]), ("8class", list(range(9)))):
        cohort = load_cohort(tmp_path, split, (2, 2, 3), mode)  # (D, H, W) = (Z, Y, X): no resize
        merged = cohort.labels["a"].transpose(2, 1, 0)  # back to (X, Y, Z)
        assert merged.dtype == np.uint8
        assert merged[labels == 9].tolist() == [IGNORE_LABEL] and merged[labels == 10].tolist() == [
            IGNORE_LABEL
        ]
        assert [int(merged[labels == raw][0]) for raw in range(9)] == classes


def test_preprocess_zscores_nonzero_voxels_and_resizes():
    rng = np.random.default_rng(0)
    image = np.zeros((3, 40, 40, 10), dtype=np.float32)
    image[:, 10:30, 10:30, 2:8] = rng.uniform(100, 200, size=(3, 20, 20, 6))
    labels = np.zeros((40, 40, 10), dtype=np.uint8)
    labels[10:30, 10:30, 2:8] = 3
    out, _ = preprocess(image, labels, (10, 40, 40), "4class")
    inside = out[:, 2:8, 10:30, 10:30]
    np.testing.assert_allclose(inside.reshape(3, -1).mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(inside.reshape(3, -1).std(axis=1), 1, atol=1e-2)
    small, small_labels = preprocess(image, labels, (5, 20, 20), "4class")
    assert small.shape == (3, 5, 20, 20) and small_labels.shape == (5, 20, 20)
    assert set(np.unique(small_labels)) == {0, 2}


def test_cohort_split_and_digest(cohort_root: Path):
    split = resolve_split(find_subjects(cohort_root), ["070"], ["1", "4"], ["101"], "test")
    cohort = load_cohort(cohort_root, split, (8, 32, 32), "4class")
    assert set(cohort.images) == {"070", "1", "4", "101"}
    assert cohort.images["1"].shape == (3, 8, 32, 32) and cohort.labels["1"].shape == (8, 32, 32)
    assert cohort.n_classes == 4
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2 if threads == 1 else 1)  # the same floats with any thread count
        again = load_cohort(cohort_root, split, (8, 32, 32), "4class")
        assert torch.get_num_threads() == (2 if threads == 1 else 1)  # and the caller's count restored
    finally:
        torch.set_num_threads(threads)
    assert again.digest == cohort.digest
    assert load_cohort(cohort_root, split, (8, 32, 32), "8class").digest != cohort.digest
    # The caller's raw arrays stay as read (normalisation works in place on its own copy).
    image, labels = read_subject(cohort_root, "1")
    kept = image.copy()
    preprocess(image, labels, (8, 32, 32), "4class")
    assert np.array_equal(image, kept)


def test_a_cached_cohort_is_the_same_cohort_and_a_changed_file_is_read_again(
    cohort_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import study.cohort.cohort as cohort_module

    data, cache = tmp_path / "data", tmp_path / "cache"
    for subject in ("070", "1", "101"):
        shutil.copytree(cohort_root / subject, data / subject)
    split = resolve_split(find_subjects(data), ["070"], ["1"], ["101"], "test")
    first = load_cohort(data, split, (8, 32, 32), "4class", cache=cache)
    (stored,) = (cache / "cohorts").glob("*.npz")

    def no_reading(*args):
        raise AssertionError("read from the NIfTI files although they were cached")

    with monkeypatch.context() as patched:
        patched.setattr(cohort_module, "preprocess", no_reading)
        cached = load_cohort(data, split, (8, 32, 32), "4class", cache=cache)
    assert cached.digest == first.digest == load_cohort(data, split, (8, 32, 32), "4class").digest
    assert all(np.array_equal(cached.images[s], first.images[s]) for s in first.images)

    stored.write_bytes(stored.read_bytes()[:1000])  # cut off: read from the files again
    assert load_cohort(data, split, (8, 32, 32), "4class", cache=cache).digest == first.digest
    t1 = data / "1" / "pre" / "reg_T1.nii.gz"
    image = nib.load(t1)
    changed = np.asarray(image.dataobj, dtype=np.float32)
    changed[100:140, 100:140, 20:28] += 50.0  # a re-exported scan: other voxels, another cohort
    nib.save(nib.Nifti1Image(changed, image.affine), t1)
    assert load_cohort(data, split, (8, 32, 32), "4class", cache=cache).digest != first.digest
    assert len(list((cache / "cohorts").glob("*.npz"))) == 2


@pytest.mark.parametrize(
    ("forget", "retain", "holdout", "message"),
    [
        ([], None, [], "forget set is empty"),
        (["070"], ["070", "1"], [], "both --forget and --retain"),
        (["999"], None, [], "unknown subject"),
        (["070"], None, ["070"], "both --forget and --holdout"),
    ],
)
def test_bad_splits_are_refused(forget, retain, holdout, message):
    with pytest.raises(StudyError, match=message):
        resolve_split(["1", "4", "070", "148"], forget, retain, holdout, "test")


def test_default_retain_is_everyone_else():
    split = resolve_split(["1", "4", "070", "148", "101"], ["070", "148"], None, ["101"], "test")
    assert split.retain == ("1", "4") and split.training == ("1", "4", "070", "148")


def _cohort_of(split: Split) -> Cohort:
    subjects = split.training + split.holdout
    images = {s: np.zeros((3, 2, 2, 2), np.float32) for s in subjects}
    labels = {s: np.zeros((2, 2, 2), np.uint8) for s in subjects}
    return Cohort(images, labels, split, 4, "d")


def test_another_forget_set_moves_the_first_retain_subjects_and_keeps_the_training_set():
    cohort = _cohort_of(Split(forget=("070", "148"), retain=("1", "4", "5"), holdout=("101",)))
    other = with_other_forget(cohort, None)
    assert other.split == Split(forget=("1", "4"), retain=("5", "070", "148"), holdout=("101",))
    assert set(other.split.training) == set(cohort.split.training)  # so the original model stays
    assert other.images is cohort.images and other.digest != cohort.digest
    named = with_other_forget(cohort, ["5"])
    assert named.split.forget == ("5",) and named.split.retain == ("1", "4", "070", "148")
    assert named.digest not in (cohort.digest, other.digest)
    assert with_other_forget(cohort, []) is None


def test_another_forget_set_needs_enough_retain_subjects_and_retain_ids():
    small = _cohort_of(Split(forget=("070", "148"), retain=("1",)))
    assert with_other_forget(small, None) is None  # the cohort does not allow one of the same size
    cohort = _cohort_of(Split(forget=("070", "148"), retain=("1", "4"), holdout=("101",)))
    for named, message in (
        (["101"], "not retain subjects"),
        (["070"], "not retain subjects"),
        (["1", "1"], "twice"),
    ):
        with pytest.raises(StudyError, match=message):
            with_other_forget(cohort, named)


def test_a_deletion_request_may_name_any_training_subject_but_no_other():
    cohort = _cohort_of(Split(forget=("070", "148"), retain=("1", "4"), holdout=("101",)))
    request = with_forget(cohort, ["148", "4"])
    assert request.split == Split(forget=("148", "4"), retain=("1", "070"), holdout=("101",))
    assert with_forget(cohort, ["070", "148"]).digest != cohort.digest  # cache keys see the split
    for named, message in (
        (["101"], "holdout subject"),
        (["999"], "not in this study's cohort"),
        (["1", "1"], "twice"),
        (["1", "4", "070", "148"], "every training subject"),
        ([], "names no subject"),
    ):
        with pytest.raises(StudyError, match=message):
            with_forget(cohort, named)
