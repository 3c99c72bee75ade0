"""``StudyConfig``: every setting of a study, with its default and what it means.

Values come from a preset, a TOML file and flags (``study/config/sources.py``); the resolved
configuration is written to ``<run_dir>/config.toml`` and is enough to reproduce the study.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from study.config.errors import StudyError
from study.config.objectives import OBJECTIVES

SAMPLERS = ("auto", "gp", "tpe", "nsga2", "random")
LABEL_MODES = ("4class", "8class")
MODEL_DEPTHS = (10, 18, 34, 50)
#: Seeds lie in ``0..SEED_LIMIT - 1``: Optuna's samplers take the study's seed as numpy's legacy one.
SEED_LIMIT = 2**32
PRECISIONS = ("fp32", "bf16")  # of the training steps' forward passes


@dataclass
class StudyConfig:
    """A study's settings. Paths are strings so the config round-trips through TOML."""

    preset: str = "demo"
    run_dir: str = ""  # default runs/<preset>-<timestamp>
    # Data and model
    data: str = ""  # MRBrainS18 training folder; empty: the synthetic cohort
    allow_synthetic: bool = True  # whether the synthetic cohort stands in for missing --data
    weights: str = ""  # MedicalNet checkpoint; empty: random initialisation
    cache_dir: str = ""  # empty: $XDG_CACHE_HOME (or ~/.cache)/mri-unlearning-study
    forget: list[str] = field(default_factory=lambda: ["070", "148"])
    retain: list[str] | None = None  # None: every subject not in forget or holdout
    holdout: list[str] | None = None  # None: the synthetic extras, or none for real data
    label_mode: str = "4class"
    input_size: list[int] = field(default_factory=lambda: [16, 64, 64])  # D, H, W
    model_depth: int = 10
    model_width: float = 0.25
    # Original model (and retrain reference) training
    baseline_epochs: int = 100
    baseline_lr: float = 3e-3
    batch_size: int = 2
    precision: str = "fp32"  # "bf16": forward passes of training steps under bf16 autocast, GPU only
    channels_last: bool = False  # images and weights in the channels_last_3d memory format
    # The search
    strategies: list[str] = field(default_factory=list)  # empty: every registered strategy
    num_samples: int = 4
    max_epochs: int = 30
    horizons: list[int] = field(default_factory=lambda: [15, 30])
    # "auto": Optuna's Gaussian-process sampler (ahead of TPE at 2 and 8 trials in flight of
    # 16: python -m study.bench search; README, Performance), or random search where a
    # strategy has so many trials in flight that no suggestion could learn from finished ones
    # (search_spaces.searcher.choose_sampler); or one of them by name.
    sampler: str = "auto"
    objective: str = "reference"  # what the search maximises: "reference" or "retrain-match"
    warm_start: bool = True  # first trial of each search = the strategy's hand-picked start
    # Narrower or wider ranges for numeric hyperparameters, e.g. {"lr": [1e-4, 1e-3]}
    search_bounds: dict[str, list[float]] = field(default_factory=dict)
    score_weight: float = 0.5
    seed: int = 0
    seed_reruns: int = 3  # the recommended configuration rerun with this many fresh seeds (0: none)
    bn_mode_reruns: bool = True  # ... and at its own seed under every other bn_mode
    # The original, retrain and recommended models scored as MRBrainS18 scores (per label, on
    # the native grid; official_scores.parquet, predictions/) at the end of the study
    native_scores: bool = True
    # The per-subject membership test (study/metrics/membership.py): models retrained without
    # the forget subjects with this many seeds (1: the retrain reference alone), and shadow
    # models, each trained on a random half of the labelled subjects (0: no test)
    retrain_seeds: int = 1
    shadow_models: int = 0
    privacy_level: float = 0.05  # a forget subject is distinguishable from retraining at p below this
    # ... and the seed reruns on this forget set too, with its own retrain reference
    # (None: the first len(forget) retain subjects; []: not at all)
    other_forget: list[str] | None = None
    # Ray
    address: str = ""  # empty: start a local Ray; "auto" or host:port joins a cluster
    # Where Tune keeps results and checkpoints: empty for <run_dir>/ray_results, a folder every
    # node mounts, or a pyarrow URI such as s3://bucket/prefix (options as URI query parameters)
    storage: str = ""
    cpus_per_trial: int = 1
    gpus_per_trial: float = 0.0
    # Custom Ray resources each trial (and baseline) also asks for, e.g. {"accelerator_type:H100" = 0.001}
    trial_resources: dict[str, float] = field(default_factory=dict)
    # Trials in flight at once, running or waiting for a node (0: follow the cluster: the nodes
    # alive now, up to the autoscaler's maximum where Ray exposes it, else at least
    # DEFAULT_TRIALS_IN_FLIGHT on a joined cluster; study/run/cluster.py, Capacity)
    max_trials_in_flight: int = 0
    # Trials of one strategy in flight at once (0: an even share of the trials in flight, at
    # least num_samples / 4)
    concurrent_per_strategy: int = 0
    # On an autoscaling cluster: how long to wait for a node that fits a trial (0: it must exist now)
    resource_wait_s: int = 0
    checkpoint_every: int = 1  # epochs; 0: only at horizons and the last epoch
    # Epochs between a trial's evaluations; checkpointed epochs (horizons, the last) are
    # evaluated too, and only evaluated epochs are reported: one row each in trials.parquet
    eval_every: int = 1
    max_failures: int = 2
    # Tune callbacks the driver adds to the study's own, as "module:Class" (built without
    # arguments; importable on the driver when it starts and when it resumes), e.g. a logger
    tune_callbacks: list[str] = field(default_factory=list)
    # Ray's dashboard for a local Ray; None: on where this machine has 4 cores or more
    # (its processes cost a 2-core machine about 10 s of a demo run: python -m study.bench overhead).
    dashboard: bool | None = None
    dashboard_host: str = "127.0.0.1"  # "0.0.0.0" exposes the dashboard to the network

    @property
    def cache_path(self) -> Path:
        """Where synthetic cohorts and trained reference models are cached across studies."""
        if self.cache_dir:
            return Path(self.cache_dir)
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mri-unlearning-study"

    def validate(
        self,
        known_strategies: tuple[str, ...],
        numeric_bounds: dict[str, tuple[float, float, bool]] | None = None,
        valid_ranges: dict[str, tuple[float, float]] | None = None,
    ) -> StudyConfig:
        """Returns ``self`` after checking every field; raises ``StudyError`` naming the first bad one.

        An empty ``strategies`` list becomes every strategy in ``known_strategies``;
        ``search_bounds`` is checked against ``numeric_bounds``, ``{name: (low, high, log)}`` of
        the searchable numeric hyperparameters, and must lie inside ``valid_ranges``
        (``{name: (low, high)}``, where each one means anything).
        """
        self.strategies = self.strategies or list(known_strategies)
        if unknown := [s for s in self.strategies if s not in known_strategies]:
            raise StudyError(
                f"strategies: unknown {', '.join(unknown)}; choose from {', '.join(known_strategies)}"
            )
        self._check_training()
        check_precision(self.precision, on_gpu=self.gpus_per_trial > 0, setting="gpus_per_trial > 0")
        self._check_resources()
        self._check_search_bounds(numeric_bounds, valid_ranges or {})
        if not self.data and not self.allow_synthetic:
            raise StudyError(
                f"preset {self.preset!r} needs real data: pass --data with the MRBrainS18 "
                "training folder (holding 1/, 4/, 5/, 7/, 14/, 070/, 148/)"
            )
        return self

    def _check_training(self) -> None:
        positive = (
            "num_samples",
            "max_epochs",
            "baseline_epochs",
            "batch_size",
            "cpus_per_trial",
            "eval_every",
        )
        if not 0 <= self.seed < SEED_LIMIT:
            raise StudyError(f"seed must lie in 0..{SEED_LIMIT - 1}, got {self.seed}")
        for name in positive:
            if getattr(self, name) < 1:
                raise StudyError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if bad := [h for h in self.horizons if not 1 <= h <= self.max_epochs]:
            raise StudyError(
                f"horizons {bad} lie outside 1..max_epochs ({self.max_epochs}); "
                "lower them or raise --max-epochs"
            )
        if len(self.input_size) != 3 or min(self.input_size) < 8:
            raise StudyError(f"input_size must be three sizes (D, H, W) of at least 8, got {self.input_size}")
        checks = {
            "label_mode": (self.label_mode, LABEL_MODES),
            "sampler": (self.sampler, SAMPLERS),
            "objective": (self.objective, tuple(OBJECTIVES)),
            "model_depth": (self.model_depth, MODEL_DEPTHS),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise StudyError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        if self.model_width <= 0 or self.baseline_lr <= 0:
            raise StudyError("model_width and baseline_lr must be positive")
        if not 0 <= self.score_weight <= 1:
            raise StudyError(f"score_weight must lie in [0, 1], got {self.score_weight}")
        self._check_membership_test()

    def _check_membership_test(self) -> None:
        if self.retrain_seeds < 1 or self.shadow_models < 0:
            raise StudyError(
                f"retrain_seeds must be at least 1 and shadow_models at least 0, got "
                f"{self.retrain_seeds} and {self.shadow_models}"
            )
        if self.shadow_models and (self.shadow_models < 2 or self.retrain_seeds < 2):
            raise StudyError(
                f"the membership test needs shadow_models >= 2 and retrain_seeds >= 2 "
                f"(got {self.shadow_models} and {self.retrain_seeds}); shadow_models = 0 turns it off"
            )
        if not 0 < self.privacy_level < 1:
            raise StudyError(f"privacy_level must lie in (0, 1), got {self.privacy_level}")

    def _check_resources(self) -> None:
        counts = ("gpus_per_trial", "checkpoint_every", "max_failures", "concurrent_per_strategy")
        counts += ("max_trials_in_flight",)
        for name in (*counts, "seed_reruns", "resource_wait_s"):
            if getattr(self, name) < 0:
                raise StudyError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise StudyError(
                f"gpus_per_trial {self.gpus_per_trial}: Ray shares a GPU (fractions up to 1) or gives "
                "whole GPUs; use a fraction <= 1 or a whole number"
            )
        if bad := {k: v for k, v in self.trial_resources.items() if v <= 0}:
            raise StudyError(f"trial_resources must be positive amounts, got {bad}")
        if reserved := {"CPU", "GPU", "memory"} & {k for k in self.trial_resources}:
            raise StudyError(
                f"trial_resources names {', '.join(sorted(reserved))}; set those with "
                "cpus_per_trial and gpus_per_trial, and keep trial_resources for custom resources"
            )

    def _check_search_bounds(
        self,
        numeric_bounds: dict[str, tuple[float, float, bool]] | None,
        valid_ranges: dict[str, tuple[float, float]],
    ) -> None:
        for name, bounds in self.search_bounds.items():
            if numeric_bounds is not None and name not in numeric_bounds:
                raise StudyError(
                    f"search_bounds: {name!r} is not a numeric hyperparameter; "
                    f"choose from {', '.join(sorted(numeric_bounds))}"
                )
            if len(bounds) != 2 or not bounds[0] < bounds[1]:
                raise StudyError(f"search_bounds.{name} must be [low, high] with low < high, got {bounds}")
            if numeric_bounds is not None and numeric_bounds[name][2] and bounds[0] <= 0:
                raise StudyError(f"search_bounds.{name} is searched on a log scale: low must be > 0")
            low, high = valid_ranges.get(name, (-math.inf, math.inf))
            if not low <= bounds[0] < bounds[1] <= high:
                raise StudyError(
                    f"search_bounds.{name} = {bounds} leaves the range where {name} means anything, "
                    f"[{low:g}, {high:g}]; keep both bounds inside it"
                )


def check_precision(precision: str, on_gpu: bool, setting: str) -> None:
    """A ``StudyError`` unless ``precision`` is known and, for bf16, training runs on a GPU
    (``setting``: what makes it one, for the message)."""
    if precision not in PRECISIONS:
        raise StudyError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and not on_gpu:
        raise StudyError(
            f"precision bf16 needs {setting}: on a CPU, bf16 autocast trained this network "
            "neither reproducibly nor stably"
        )
