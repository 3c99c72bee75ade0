"""What a study is told, and how it says no: its settings (a ``StudyConfig`` from presets, TOML
files and flags), the epoch schedule every trial follows, and the one error type for what a
user can get wrong."""

from study.config.errors import StudyError, StudyIncomplete, StudyInterrupted, first_line, run_cli
from study.config.objectives import OBJECTIVES
from study.config.schedule import EpochSchedule
from study.config.schema import StudyConfig, check_precision
from study.config.sources import PRESETS, config_from_toml, config_to_toml, differing_settings, load_config

__all__ = [
    "OBJECTIVES",
    "PRESETS",
    "EpochSchedule",
    "StudyConfig",
    "StudyError",
    "StudyIncomplete",
    "StudyInterrupted",
    "check_precision",
    "config_from_toml",
    "config_to_toml",
    "differing_settings",
    "first_line",
    "load_config",
    "run_cli",
]
