"""Models of the original recipe: the original model, the retrain reference, more retrained
seeds and shadow models, each trained once.

``original``: trained on retain + forget subjects; every strategy starts from it.
``retrain``: the same recipe on retain subjects only: exact unlearning, the gold standard;
``retrain_seed_<k>``: the same with seed ``seed + k`` (``retrain_seeds`` in all).
``shadow_<m>``: the recipe on a random half of every labelled subject (``shadow_models``),
for the per-subject membership test (``study/metrics/membership.py``).
``reference_models`` is the one way to get them, for any cohort (its split says who is
retained and who forgotten) and seed (``config.seed``): each is taken from the cache or
trained, as Ray tasks side by side while Ray is up and in this process otherwise, and cached
under a key of everything that determines it (whom it trains on, in which order, the seed,
the recipe) as soon as it is trained; then all are measured on every subject: the
``Reference`` that trials are scored against and the membership ``Evidence``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from study.cohort import Cohort, Split, trained_on
from study.config import EpochSchedule, StudyConfig
from study.metrics import Reference, measure_reference, set_metrics
from study.metrics.evidence import Evidence
from study.model import cpu_state, model_from
from study.run.cluster import remote
from study.run.console import Progress, duration, time_left
from study.run.rundir import RunDir
from trainables.loop import run_epochs
from trainables.recipes import KINDS, Recipe, cache_file, cache_key, load_cached, recipes, store
from trainables.settings import Compute, LoopSettings
from trainables.strategy import Supervised

#: What the study prints of each model's figures.
SHOWN = ("retain_dice", "forget_dice", "holdout_dice", "forget_gap_to_retrain", "mia_auc", "mia_forget")


def train_model(
    name: str,
    recipe: Recipe,
    config: StudyConfig,
    cohort: Cohort,
    start: dict[str, torch.Tensor],
    compute: Compute,
    epochs_told: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Trains the model of ``recipe`` from the state ``start``: plain Adam, cosine decay, true
    labels on every subject it trains on; returns its CPU state dict and its figures
    (``retain_*`` on those subjects, ``holdout_*`` on the others)."""
    compute.use_threads()
    cohort = trained_on(cohort, recipe.members)
    model = model_from(config, cohort.n_classes, start)
    schedule = EpochSchedule(config.baseline_epochs, max(1, config.baseline_epochs // 5), checkpoint_every=0)
    settings = LoopSettings(
        schedule,
        lr=config.baseline_lr,
        weight_decay=0.0,
        batch_size=config.batch_size,
        seed=recipe.seed,
        cosine_decay=True,
    )
    started = time.monotonic()

    def progress(metrics: dict[str, Any], checkpoint: Any) -> None:
        if epochs_told and metrics["epoch"] % schedule.eval_every == 0:
            print(
                f"{name} model: epoch {metrics['epoch']}/{schedule.max_epochs}  "
                f"Dice {metrics['retain_dice']:.3f} on its training subjects, "
                f"{metrics['holdout_dice']:.3f} on the others  ({_elapsed_and_left(metrics['epoch'], schedule.max_epochs, started)})",
                flush=True,
            )

    run_epochs(
        model,
        Supervised(n_classes=cohort.n_classes, uses_forget=False),
        cohort,
        settings,
        progress,
        compute=compute,
    )
    return cpu_state(model), set_metrics(model, cohort, compute.torch_device())


def measure(
    config: StudyConfig, cohort: Cohort, states: dict[str, dict[str, torch.Tensor]], compute: Compute
) -> tuple[Reference, Evidence]:
    """The ``Reference`` and the membership ``Evidence``: every model of ``states`` (named as
    in ``recipes``) evaluated on every subject."""
    compute.use_threads()
    device = compute.torch_device()
    models = {name: model_from(config, cohort.n_classes, state).to(device) for name, state in states.items()}
    recipe = recipes(config, cohort)
    members = {name: frozenset(recipe[name].members) for name in states}
    return measure_reference(models, cohort, device, members, config.score_weight, config.privacy_level)


@dataclass(frozen=True)
class References:
    """The models of the original recipe for one cohort, the ``Reference`` measured with them
    and their membership ``Evidence``."""

    states: dict[str, dict[str, torch.Tensor]]
    reference: Reference
    evidence: Evidence
    trained_on: dict[str, str]  # the models trained now (not cached): where each was trained


class ReferencesInTraining:
    """``reference_models``' work: the models found in the cache, and the others in training
    (Ray tasks) or to train (in this process, once ``result()`` is asked for)."""

    def __init__(
        self,
        config: StudyConfig,
        cohort: Cohort,
        start: dict[str, torch.Tensor],
        states: dict[str, dict[str, torch.Tensor]],
        wanted: dict[str, Recipe],
        cores: int | None,
        tell_epochs: bool = True,
    ) -> None:
        self.config, self.cohort, self.start, self.states, self.cores = config, cohort, start, states, cores
        self.wanted = wanted
        self.missing = [name for name in wanted if name not in states]
        # One or two models tell their epochs; more (shadow models) a line each as it is done.
        self.epochs_told = tell_epochs and len(self.missing) <= 2
        forget = ",".join(cohort.split.forget)
        self.progress = Progress(f"models of the original recipe for forget set {forget}", len(self.missing))
        self.cohort_ref: Any = None  # the cohort in Ray's object store, while Ray is up
        self.tasks: dict[Any, str] = {}  # Ray task -> the model it trains
        self.trained_on: dict[str, str] = {}

    def submit(self, cohort_ref: Any) -> None:
        """Starts a Ray task for every missing model, side by side."""
        import ray

        self.cohort_ref = cohort_ref if cohort_ref is not None else ray.put(self.cohort)
        if self.missing:
            compute, start = self.compute(len(self.missing)), ray.put(self.start)
            train = remote(self.config, _train_on_node, compute.threads)
            self.tasks = {
                train.remote(
                    n, self.wanted[n], self.config, self.cohort_ref, start, compute, self.epochs_told
                ): n
                for n in self.missing
            }

    def result(self) -> References:
        """Every model, each trained one cached as soon as it is done, and their measures (in
        a Ray task on a cluster; in this process without Ray or on a local Ray of ours)."""
        config, measuring = self.config, self.compute(1)
        if self.cohort_ref is None:  # in this process, one model after the other
            for name in self.missing:
                trained = train_model(
                    name,
                    self.wanted[name],
                    config,
                    self.cohort,
                    self.start,
                    self.compute(1),
                    self.epochs_told,
                )
                self._trained(name, *trained, "this process")
            measured = measure(config, self.cohort, self._states(), measuring)
            return References(self._states(), *measured, self.trained_on)
        self.trained()
        if self.cores is not None:  # a local Ray of ours: a task would add only a worker's start-up
            measured = measure(config, self.cohort, self._states(), measuring)
            return References(self._states(), *measured, self.trained_on)
        import ray

        task = remote(config, measure, measuring.threads)
        measured = ray.get(task.remote(config, self.cohort_ref, self._states(), measuring))
        return References(self._states(), *measured, self.trained_on)

    def trained(self) -> None:
        """Waits for the models in training (Ray tasks), each cached as it is done."""
        import ray

        while self.tasks:
            (done, *_), _ = ray.wait(list(self.tasks))
            self._trained(self.tasks.pop(done), *ray.get(done))

    def compute(self, tasks: int) -> Compute:
        """How each of ``tasks`` running at once computes: with a trial's CPUs, or with a share
        of the cores that are ours alone."""
        cpus = max(1, self.cores // max(1, tasks)) if self.cores else self.config.cpus_per_trial
        return Compute.of(self.config, threads=cpus)

    def _trained(
        self, name: str, state: dict[str, torch.Tensor], metrics: dict[str, float], node: str
    ) -> None:
        store(self.config, cache_key(self.config, self.cohort, self.wanted[name]), state, metrics)
        self.states[name], self.trained_on[name] = state, node
        if not self.epochs_told:
            dice = f"Dice {metrics['retain_dice']:.3f} on its training subjects, {metrics['holdout_dice']:.3f} on the others"
            self.progress.step(f"{name}: {dice}")

    def _states(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: self.states[name] for name in self.wanted}


def _elapsed_and_left(epoch: int, epochs: int, started: float) -> str:
    elapsed = time.monotonic() - started
    left = time_left(epoch, epochs, elapsed)
    return f"{duration(elapsed)}, {left}" if left else duration(elapsed)


def _train_on_node(*args: Any) -> tuple[dict[str, torch.Tensor], dict[str, float], str]:
    """``train_model`` in a Ray task, with the id of the node that ran it."""
    import ray

    return *train_model(*args), f"Ray node {ray.get_runtime_context().get_node_id()}"


def reference_models(
    config: StudyConfig,
    cohort: Cohort,
    start: dict[str, torch.Tensor],
    known: dict[str, dict[str, torch.Tensor]] | None = None,
    cores: int | None = None,
    cohort_ref: Any = None,
    names: tuple[str, ...] | None = None,
    tell_epochs: bool = True,
) -> ReferencesInTraining:
    """The models of the original recipe for ``cohort`` (``names`` of ``recipes``, default
    all): from the cache, or trained from ``start``, starting now (``result()`` waits for
    them and measures the ``Reference`` and the ``Evidence``).

    ``known``: states the caller holds already (a deletion request's original model).
    While Ray is up, each model trains and all are measured in Ray tasks that ask for a
    trial's resources (``cohort_ref``: the cohort in the object store, put there when not
    given); otherwise here. ``cores``: the CPUs of a Ray that is ours alone, shared by the
    tasks that run at once (``None``: each gets a trial's CPUs). ``tell_epochs``: one or two
    models in training print a line every few epochs (else a line as each is done).
    """
    every = recipes(config, cohort)
    wanted = {name: every[name] for name in (names or every)}
    states = {name: state for name, state in (known or {}).items() if name in wanted}
    forget = ",".join(cohort.split.forget)
    cached = []
    for name in [n for n in wanted if n not in states]:
        if (found := load_cached(config, cache_key(config, cohort, wanted[name]))) is not None:
            states[name] = found[0]
            cached.append(name)
    if cached:
        print(f"for forget set {forget}, cached in {cache_file(config, '').parent}: {', '.join(cached)}")
    training = ReferencesInTraining(config, cohort, start, states, wanted, cores, tell_epochs)
    if training.missing:
        print(
            f"training {', '.join(training.missing)} for forget set {forget} ({config.baseline_epochs} epochs each)"
        )
    if _ray_is_up():
        training.submit(cohort_ref)
    return training


def _ray_is_up() -> bool:
    try:
        import ray
    except ImportError:  # a GPU machine running the benches has torch, not Ray
        return False
    return ray.is_initialized()


def record(run: RunDir, references: References, split: Split, level: float) -> None:
    """Writes the original and retrain models and their figures into the run directory, and
    with shadow models the attack's power and every model's membership figures
    (``privacy.parquet``, subjects' roles from ``split``, tested at ``level``); prints them."""
    for kind in KINDS:
        metrics = getattr(references.reference, kind)
        run.record_baseline(kind, references.states[kind], metrics)
        print(f"{kind} model: " + "  ".join(f"{k} {metrics[k]:.3f}" for k in SHOWN))
    if references.trained_on:
        run.add_baseline_fact("trained_on", references.trained_on)
    evidence = references.evidence
    if not evidence.shadows.members:
        return
    power = evidence.power()
    run.add_baseline_fact("attack_power", power)
    run.write_privacy(pd.DataFrame(evidence.rows(_roles(split), level)))
    print(
        f"membership attack on {power['pairs']} (shadow model, subject) pairs: AUC {power['auc']:.3f}, "
        f"TPR {power['tpr_at_5_fpr']:.3f} at 5% false positives"
    )


def record_trial_tests(
    run: RunDir, evidence: Evidence, trials: pd.DataFrame, split: Split, level: float
) -> None:
    """Rewrites ``privacy.parquet`` with the reference models' rows and, after them, every
    trial's at each reported epoch (model ``<trial_id>@<epoch>``, ``Evidence.trial_rows``);
    nothing without shadow models."""
    if not evidence.shadows.members:
        return
    roles = _roles(split)
    rows = evidence.rows(roles, level) + evidence.trial_rows(trials.to_dict("records"), roles, level)
    run.write_privacy(pd.DataFrame(rows))


def _roles(split: Split) -> dict[str, str]:
    return {s: role for role in ("forget", "retain", "holdout") for s in getattr(split, role)}
