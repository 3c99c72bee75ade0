"""The data: MRBrainS18 subjects on disk (or the synthetic cohort written in their layout),
read once, preprocessed and split into forget, retain and holdout subjects."""

from study.cohort.cohort import (
    Cohort,
    cohort_root,
    load_cohort,
    open_cohort,
    study_split,
    trained_on,
    with_forget,
    with_other_forget,
)
from study.cohort.mrbrains import CLASS_NAMES, IGNORE_LABEL, subject_files
from study.cohort.preprocess import preprocess
from study.cohort.reader import find_subjects, read_subject
from study.cohort.split import Split, check_request, resolve_split

__all__ = [
    "CLASS_NAMES",
    "IGNORE_LABEL",
    "Cohort",
    "Split",
    "check_request",
    "cohort_root",
    "find_subjects",
    "load_cohort",
    "open_cohort",
    "preprocess",
    "read_subject",
    "resolve_split",
    "study_split",
    "subject_files",
    "trained_on",
    "with_forget",
    "with_other_forget",
]
