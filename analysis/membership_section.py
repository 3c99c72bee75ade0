"""The report's per-subject membership test: the attack's power first, then each forget
subject's statistic under the reference models, then the verdicts of the two knees.

Read with ``study/metrics/membership.py``, which says how every figure here is computed.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.document import Figure, Paragraph, Section, Table
from analysis.study_state import Study
from analysis.summary import Recommendation
from study.metrics.evidence import subject_column
from study.metrics.membership import epsilon

#: What the knees' table shows beside each verdict: what the knee forgets and what it keeps.
KNEE_FIGURES = ("forget_dice", "forget_drop", "retain_kept")

MEMBERSHIP_RULE = (
    "The statistic is the mean logit of the true class's probability over a subject's scored "
    "voxels. The attack's power: every (shadow model, subject) pair scored by IN/OUT Gaussians "
    "fitted without that shadow model. A forget subject is distinguishable from retraining "
    "when its statistic (against the retrain seeds and the OUT shadow models) or its Dice "
    "(against the retrain seeds' seed-to-seed spread) lies outside them at p below half the "
    "privacy level (Student-t prediction tails; Bonferroni over the two tests): under = looks "
    "trained on, over = looks worse than never seen, itself a signal. Each retrain seed is "
    "tested against the others."
)


def power_sentence(study: Study) -> str:
    """The attack's power as the study measured it, or why it was not."""
    power = study.baselines.get("attack_power")
    if not power:
        return (
            "No per-subject membership test: the study ran without shadow models "
            "(shadow_models = 0). With --shadow-models 8 --retrain-seeds 3 it runs."
        )
    models = study.config.shadow_models
    return (
        f"The attack's power on {models} shadow models ({power['pairs']} pairs): ROC AUC "
        f"{_number(power['auc'])}, true-positive rate {_number(power['tpr_at_5_fpr'])} at 5% false positives."
    )


def _number(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def reference_tests(privacy: pd.DataFrame) -> pd.DataFrame:
    """The forget subjects' tests of the original model and of each retrained model, with the
    log likelihood ratio the shadow models' Gaussians give each (above 0: looks trained on)."""
    shown = privacy[
        (privacy["role"] == "forget") & privacy["model"].str.match(r"^(original|retrain(_seed_\d+)?)$")
    ]
    columns = [
        "model",
        "subject",
        "statistic",
        "likelihood_ratio",
        "z_to_retrain",
        "p_to_retrain",
        "direction",
        "dice",
    ]
    return shown[columns].reset_index(drop=True)


def knee_verdict(recommendation: Recommendation | None, forget: int) -> str:
    """A knee's membership verdict from its row's two columns."""
    if recommendation is None:
        return "none"
    counted = recommendation.figures.get("forget_distinguishable", math.nan)
    if not math.isfinite(counted):
        return "not tested (no shadow models)"
    worst = recommendation.figures["worst_forget_p_to_retrain"]
    if counted == 0:
        return f"indistinguishable from retraining for all {forget} forget subjects (worst p {worst:.3g})"
    return f"{int(counted)} of {forget} forget subjects distinguishable from retraining (worst p {worst:.3g})"


def knees_table(study: Study) -> pd.DataFrame:
    """The searched knee and the safe-to-deploy knee, each with its figures and verdict."""
    forget = len(study.config.forget)
    lines = []
    for label, knee in (
        ("searched knee", study.recommendation),
        ("safe to deploy", study.safe_recommendation),
    ):
        named = f"{knee.strategy} {knee.trial_id} @ {knee.epoch} epochs" if knee else "none"
        figures = {f: knee.figures.get(f, math.nan) if knee else math.nan for f in KNEE_FIGURES}
        lines.append({"": label, "trial": named, **figures, "membership verdict": knee_verdict(knee, forget)})
    return pd.DataFrame(lines)


def safe_sentence(study: Study) -> str:
    """How many trial rows the safe knee was chosen among, and what that choice means."""
    rows = study.tested_rows
    tested = rows[rows["forget_distinguishable"].notna() & rows["horizon"].notna()]
    safe = int((tested["forget_distinguishable"] == 0).sum())
    counted = f"Of {len(tested)} trial rows tested (every trial at every reported epoch), {safe} "
    if not safe:
        return (
            counted
            + "are indistinguishable from retraining for every forget subject: none is safe to deploy by this test."
        )
    return counted + (
        "are indistinguishable from retraining for every forget subject; the safe-to-deploy knee "
        "is the knee of the searched objective among them. Each row is tested at the privacy "
        "level with no correction for this choice, so among many rows some pass by chance: "
        "more shadow models and retrain seeds (the paper preset) make passing by chance rarer."
    )


def epsilon_table(study: Study, knee: Recommendation) -> pd.DataFrame | None:
    """Per forget subject, the NeurIPS 2023 unlearning challenge's epsilon (delta 1e-5) between
    ``knee``'s runs (the trial and its fresh-seed reruns at its epoch, ``seeds.parquet``) and
    the models never trained on the subject that the test uses (retrain seeds, OUT shadow
    models), with the counts and the cap they imply; ``None`` without reruns at that epoch."""
    seeds, privacy = study.run.read_seed_runs(), study.privacy
    if seeds is None or privacy is None:
        return None
    own = ",".join(study.config.forget)
    reruns = seeds[(seeds["trial_id"] == knee.trial_id) & (seeds["epoch"] == knee.epoch)]
    reruns = reruns[reruns["forget"] == own] if "forget" in reruns else reruns
    trial = study.trials[(study.trials["trial_id"] == knee.trial_id) & (study.trials["epoch"] == knee.epoch)]
    runs = pd.concat([trial, reruns.drop_duplicates("seed", keep="last")], ignore_index=True)
    columns = [subject_column("statistic", s) for s in study.config.forget]
    if reruns.empty or not set(columns) <= set(runs.columns):
        return None
    if (reference := study.forget_reference) is None:
        return None
    lines = []
    for subject, column in zip(study.config.forget, columns, strict=True):
        e = epsilon(runs[column].dropna().tolist(), reference.statistics[subject])
        lines.append(
            {
                "subject": subject,
                "epsilon": e.epsilon,
                "cap": e.cap,
                "runs": e.runs,
                "references": e.references,
            }
        )
    return pd.DataFrame(lines)


def reruns_verdict(study: Study, knee: Recommendation) -> str:
    """How many of ``knee``'s fresh-seed reruns on the study's forget set are indistinguishable
    for every forget subject, with each one's worst p; empty without reruns at its epoch."""
    seeds = study.run.read_seed_runs()
    if seeds is None or "forget_distinguishable" not in seeds:
        return ""
    own = ",".join(study.config.forget)
    at = seeds[(seeds["trial_id"] == knee.trial_id) & (seeds["epoch"] == knee.epoch)]
    at = at[at["forget"] == own] if "forget" in at else at
    at = at.drop_duplicates("seed", keep="last").dropna(subset=["forget_distinguishable"])
    if at.empty:
        return ""
    passed = int((at["forget_distinguishable"] == 0).sum())
    worst = ", ".join(f"{p:.2g}" for p in at["worst_forget_p_to_retrain"])
    return (
        f"Of its {len(at)} fresh-seed reruns, {passed} are indistinguishable for every forget "
        f"subject (worst p per rerun: {worst})."
    )


def _epsilon_blocks(study: Study) -> list:
    blocks: list = []
    knees = {"searched knee": study.recommendation, "safe to deploy": study.safe_recommendation}
    for label, knee in knees.items():
        if knee is not None and (table := epsilon_table(study, knee)) is not None:
            blocks += [
                Paragraph(
                    f"The {label} ({knee.strategy} {knee.trial_id} @ {knee.epoch} epochs) over fresh "
                    f"seeds. {reruns_verdict(study, knee)} Its per-subject epsilon: the trial and its "
                    "reruns against the models never trained on the subject; 0 cannot be told apart, "
                    "the cap is the most these run counts can show."
                ),
                Table(table),
            ]
    return blocks


def membership_section(study: Study) -> Section:
    """The per-subject membership test, or why the study has none."""
    blocks: list = [Paragraph(power_sentence(study))]
    privacy = study.privacy
    if privacy is not None:
        blocks.append(Table(reference_tests(privacy)))
        blocks += [Figure(f"membership-{s}") for s in study.config.forget]
        blocks.append(Table(knees_table(study)))
        blocks.append(Paragraph(safe_sentence(study)))
        blocks += _epsilon_blocks(study)
    return Section("Privacy: per-subject membership test", [*blocks, Paragraph(MEMBERSHIP_RULE, rule=True)])
