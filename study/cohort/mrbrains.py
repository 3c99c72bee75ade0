"""MRBrainS18 as released: the folder layout of a subject and the meaning of its label values.

The loader reads this layout and the synthetic writer writes it::

    <root>/<subject>/pre/reg_T1.nii.gz  pre/reg_IR.nii.gz  pre/FLAIR.nii.gz  segm.nii.gz

Labels 9 (infarction) and 10 (other) are not scored in MRBrainS18: every label mode maps
them to ``IGNORE_LABEL``, which no class uses. The loss, the Dice and the MAE leave voxels
so labelled out, and no strategy turns them into a class.
"""

from __future__ import annotations

from pathlib import Path

#: Files of one subject, relative to its folder, in channel order (T1, IR, FLAIR).
MODALITY_FILES = ("pre/reg_T1.nii.gz", "pre/reg_IR.nii.gz", "pre/FLAIR.nii.gz")
LABEL_FILE = "segm.nii.gz"
MAX_LABEL = 10
#: The value of an unscored voxel in a preprocessed label map (labels are stored as uint8).
IGNORE_LABEL = 255
#: MRBrainS18 labels left out of training and scoring: infarction, other.
IGNORED_LABELS = (9, 10)

#: MRBrainS18 label -> class. ``4class``: the MRBrainS13 convention GM = {1, 2},
#: WM = {3, 4}, CSF = {5, 6}; ``8class``: labels 1..8 as they are. Infarction 9 and
#: other 10 -> ``IGNORE_LABEL`` in every mode; the rest (cerebellum and brain stem in
#: 4-class mode) is background.
_IGNORED = dict.fromkeys(IGNORED_LABELS, IGNORE_LABEL)
LABEL_MERGES: dict[str, dict[int, int]] = {
    "4class": {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3, **_IGNORED},
    "8class": {**{label: label for label in range(1, 9)}, **_IGNORED},
}
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "4class": ("background", "GM", "WM", "CSF"),
    "8class": (
        "background",
        "cortical GM",
        "basal ganglia",
        "WM",
        "WM lesions",
        "extracerebral CSF",
        "ventricles",
        "cerebellum",
        "brain stem",
    ),
}


def subject_files(root: Path, subject: str) -> list[Path]:
    """The NIfTI files of one subject folder: its modalities in channel order, then its labels."""
    return [Path(root) / subject / name for name in (*MODALITY_FILES, LABEL_FILE)]
