"""What each column of the run directory's Parquet tables means, written into every file's
schema as the field's ``description`` metadata, so that a table opened in another tool
(``pyarrow.parquet.read_schema``, DuckDB, Spark) says what it holds."""

from __future__ import annotations

from fnmatch import fnmatch

#: Column name -> description (Dice and MAE per subject on the network's input grid, see
#: README, Metrics; ``0`` marks the original model's figure, ``r`` the retrain reference's).
DESCRIPTIONS: dict[str, str] = {
    "strategy": "unlearning strategy (search_spaces.STRATEGIES)",
    "trial_id": "Tune trial id (folder trial_<id> in the experiment's storage)",
    "trial_number": "Optuna trial number within its strategy's study; seeds the trial",
    "epoch": "epochs of unlearning done when the row was measured",
    "status": "terminated, diverged or error: how the trial ended",
    "retain_dice": "mean foreground Dice on the retain subjects",
    "forget_dice": "mean foreground Dice on the forget subjects",
    "holdout_dice": "mean foreground Dice on the holdout subjects (never trained on)",
    "retain_mae": "mean |softmax - one-hot| over scored voxels and classes, retain subjects",
    "forget_mae": "mean |softmax - one-hot| over scored voxels and classes, forget subjects",
    "holdout_mae": "mean |softmax - one-hot| over scored voxels and classes, holdout subjects",
    "dice_gap": "retain_dice - forget_dice",
    "mae_gap": "forget_mae - retain_mae",
    "forget_drop": "objective: (forget_dice0 - forget_dice) / forget_dice0",
    "retain_kept": "objective: retain_dice / retain_dice0",
    "score": "score_weight * forget_drop + (1 - score_weight) * retain_kept",
    "forget_gap_to_retrain": "|forget_dice - forget_dice_r|",
    "forget_mae_gap_to_retrain": "|forget_mae - forget_mae_r|",
    "retrain_match": "objective (retrain-match): 1 - forget_gap_to_retrain / forget_dice0",
    "mia_auc": "population membership attack on slabs: ROC AUC, trained-on against holdout",
    "mia_forget": "share of forget slabs the population attack calls trained on",
    "mia_forget_auc": "population attack's ROC AUC, forget slabs against holdout slabs",
    "forget_loss_gap_to_retrain": "|forget loss - the retrain reference's forget loss|",
    "worst_forget_p_to_retrain": "membership test: the smallest p of a forget subject against retraining",
    "forget_distinguishable": "membership test: forget subjects distinguishable from retraining",
    "horizon": "epochs the row is read at; null: each trial's final epoch",
    "forgets_past_retrain": "forget Dice below the retrain reference's, by the retrain seeds' spread",
    "view": "objectives of the front: reference (forget_drop) or retrain-match",
    "seed": "fresh seed of a rerun (0, 1, ...)",
    "bn_mode": "BatchNorm handling of a rerun: train, freeze or recalibrate",
    "forget": "the forget set a rerun unlearned, subject ids joined by ','",
    "original_forget_dice": "forget_dice0 of that forget set",
    "retrain_forget_dice": "forget_dice_r of that forget set",
    "model": "original, retrain, retrain_seed_<k>, shadow_<m>, recommended or <trial_id>@<epoch>",
    "subject": "subject id, as the data folder names it",
    "role": "forget, retain or holdout",
    "trained_on": "whether the model trained on the subject",
    "statistic": "LiRA statistic: mean over scored voxels of log(p / (1 - p)), p of the true class",
    "likelihood_ratio": "log likelihood ratio of the statistic, IN against OUT shadow Gaussians",
    "z_to_retrain": "statistic against the retrained models: standardised difference",
    "p_to_retrain": "two-sided p of the subject's statistic against the retrained models",
    "direction": "under: looks trained on; over: looks worse than never seen",
    "dice": "Dice (MRBrainS18's, on the native grid, in official_scores.parquet)",
    "label": "MRBrainS18 label value",
    "name": "the label's name",
    "hd95_mm": "95th-percentile Hausdorff distance in mm, as MRBrainS18 computes it",
    "vs": "volume similarity 1 - |A - B| / (A + B)",
    "label_mae": "label-map MAE of the subject: mean |one-hot(prediction) - one-hot(truth)|",
}

#: Families of columns, by pattern.
PATTERNS: dict[str, str] = {
    "param_*": "the trial's hyperparameter of that name",
    "dice@*": "forget Dice of that subject",
    "statistic@*": "LiRA statistic of that forget subject",
}


def description(column: str) -> str:
    """What ``column`` holds; empty when it is not described."""
    if column in DESCRIPTIONS:
        return DESCRIPTIONS[column]
    return next((text for pattern, text in PATTERNS.items() if fnmatch(column, pattern)), "")
