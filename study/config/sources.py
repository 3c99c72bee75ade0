"""Where a ``StudyConfig``'s values come from, and the TOML it is saved as.

Later sources win: preset (``study/config/presets/<name>.toml``) < ``--config FILE`` < flags.
Every value is checked for its field's type here, as it is read; ``StudyConfig.validate``
then checks the values themselves.
"""

from __future__ import annotations

import dataclasses
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

from study.config.errors import StudyError
from study.config.schema import StudyConfig

PRESETS_DIR = Path(__file__).parent / "presets"
PRESETS = ("demo", "smoke", "paper")
#: Fields whose default is ``None`` ("derive it"), and the type of a value set for them.
_OPTIONAL = {"retain": list, "holdout": list, "other_forget": list, "dashboard": bool}
#: List fields of subject ids or names: their items are read as strings (``070``, not 70).
_NAMES = ("forget", "retain", "holdout", "other_forget", "strategies")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise StudyError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"config file {path} is not valid TOML: {exc}") from None


def _coerced(key: str, value: Any, source: str) -> Any:
    """``value`` as field ``key`` holds it; a ``StudyError`` when it has the wrong type."""
    expected = _OPTIONAL.get(key) or type(getattr(StudyConfig(), key))
    if expected is float and _is_number(value):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise StudyError(f"{source}: {key} must be a {expected.__name__}, got {value!r}")
    if key in _NAMES:
        return [str(v) for v in value]
    if key == "search_bounds":  # name -> [low, high]
        if not all(isinstance(v, list) and all(_is_number(x) for x in v) for v in value.values()):
            raise StudyError(f"{source}: {key} must map names to [low, high] number pairs")
        return {k: [float(x) for x in v] for k, v in value.items()}
    if key == "trial_resources":  # name -> amount
        if not all(_is_number(v) for v in value.values()):
            raise StudyError(f"{source}: {key} must map resource names to numbers")
        return {k: float(v) for k, v in value.items()}
    if key == "storage":
        return storage_setting(value)
    return value


#: The URI schemes of pyarrow's file systems, which Tune's storage is opened through.
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")
#: Database URL schemes (SQLAlchemy's, as Optuna's storage takes them): a likely mix-up.
_DATABASES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "mssql", "oracle", "redis")


def storage_setting(value: str) -> str:
    """``storage`` as saved: a folder as an absolute path (every node must see the same
    one), a URI as given; a URI of no file system pyarrow knows, or without its bucket or
    host, is a ``StudyError`` (with a hint where it looks like Optuna's database URL)."""
    if not value or "://" not in value:
        return str(Path(value).expanduser().resolve()) if value else value
    scheme, _, rest = value.partition("://")
    scheme = scheme.lower()
    if scheme.split("+")[0] in _DATABASES:
        raise StudyError(
            f"storage {value!r} is a database URL, as Optuna's storage takes; storage is where Tune "
            "keeps results and checkpoints: a folder every node mounts, or a URI such as "
            "s3://bucket/prefix (the study's Optuna storage is always RUN_DIR/optuna.journal)"
        )
    if scheme not in STORAGE_SCHEMES:
        raise StudyError(
            f"storage {value!r}: unknown URI scheme {scheme!r}; give a folder every node mounts, "
            f"or a URI of one of {', '.join(s + '://' for s in STORAGE_SCHEMES)}"
        )
    if scheme != "file" and not rest.split("/")[0].split("?")[0]:
        raise StudyError(f"storage {value!r} names no bucket or host; e.g. {scheme}://bucket/prefix")
    return value


def _apply(config: StudyConfig, values: dict[str, Any], source: str) -> None:
    fields = {f.name for f in dataclasses.fields(StudyConfig)}
    for key, value in values.items():
        if key not in fields:
            raise StudyError(f"{source}: unknown setting {key!r}; see README.md for the settings")
        setattr(config, key, _coerced(key, value, source))


def load_config(
    preset: str = "demo",
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> StudyConfig:
    """The merged configuration (not yet validated against the strategy registry)."""
    if preset not in PRESETS:
        raise StudyError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    config = StudyConfig(preset=preset)
    _apply(config, _read_toml(PRESETS_DIR / f"{preset}.toml"), f"preset {preset}")
    if config_file is not None:
        _apply(config, _read_toml(Path(config_file)), str(config_file))
    _apply(config, {k: v for k, v in (overrides or {}).items() if v is not None}, "command line")
    if not config.run_dir:
        config.run_dir = str(Path("runs") / f"{preset}-{datetime.now():%Y%m%d-%H%M%S}")
    return config


def config_from_toml(path: Path) -> StudyConfig:
    """A configuration saved by ``config_to_toml`` (a run directory's ``config.toml``)."""
    config = StudyConfig()
    _apply(config, _read_toml(path), str(path))
    return config


def config_to_toml(config: StudyConfig) -> str:
    """The configuration as TOML; ``None`` fields, meaning 'derive it', are left out."""
    import tomli_w  # only a driver writes one: a GPU machine running the benches needs none

    return tomli_w.dumps({k: v for k, v in dataclasses.asdict(config).items() if v is not None})


def differing_settings(saved: StudyConfig, given: StudyConfig) -> list[str]:
    """``"name: saved -> given"`` for each setting the two configurations (a run directory's
    and the command line's) do not share, compared as saved to TOML; ``run_dir`` and
    ``address`` (where the study runs, not what it is) aside."""

    def as_saved(config: StudyConfig) -> dict[str, Any]:
        return tomllib.loads(config_to_toml(dataclasses.replace(config, run_dir="", address="")))

    old, new = as_saved(saved), as_saved(given)
    keys = sorted(old.keys() | new.keys())
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
