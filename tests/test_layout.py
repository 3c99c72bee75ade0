"""The house has floors: every import of every module, lazy ones inside functions included,
goes down, never up or sideways into a floor it must not know."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
#: The floors of ``study/``: the data, the network, the figures, the run's infrastructure.
GROUND = ("study/config", "study/cohort", "study/model", "study/metrics", "study/run")
#: Floor -> the top-level packages and ``study`` entry points its modules may not import.
NEVER = {
    **dict.fromkeys(GROUND, ("trainables", "search_spaces", "analysis", "study.launch", "study.forget")),
    "trainables": (
        "search_spaces",
        "analysis",
        "study.launch",
        "study.forget",
        "study.replay",
        "study.bench",
    ),
    "analysis": (
        "trainables",
        "search_spaces",
        "study.launch",
        "study.forget",
        "study.replay",
        "study.bench",
    ),
    "search_spaces": ("analysis", "study.launch", "study.forget", "study.replay", "study.bench"),
}


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _breaks(name: str, never: tuple[str, ...]) -> bool:
    return any(name == n or name.startswith(n + ".") for n in never)


@pytest.mark.parametrize("floor", list(NEVER))
def test_no_module_of_a_floor_imports_what_stands_above_it(floor: str):
    files = sorted((ROOT / floor).rglob("*.py"))
    assert files, floor
    broken = {
        str(path.relative_to(ROOT)): sorted(n for n in imported(path) if _breaks(n, NEVER[floor]))
        for path in files
    }
    assert {path: names for path, names in broken.items() if names} == {}


def test_the_ground_floor_holds_everything_but_the_commands():
    own = sorted(p.name for p in (ROOT / "study").glob("*.py"))
    assert own == ["__init__.py", "cli.py", "forget.py", "launch.py", "replay.py"]
    assert sorted(
        p.name for p in (ROOT / "study").iterdir() if p.is_dir() and (p / "__init__.py").exists()
    ) == [
        "bench",
        "cohort",
        "config",
        "metrics",
        "model",
        "run",
    ]


def test_the_walk_sees_lazy_imports(tmp_path: Path):
    module = tmp_path / "module.py"
    module.write_text("import os\n\ndef f():\n    from trainables.loop import run_epochs\n")
    assert _breaks("trainables.loop", NEVER["study/run"]) and "trainables.loop" in imported(module)
