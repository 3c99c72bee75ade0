"""Shared fixtures: a synthetic cohort written once per session, and a real local Ray."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Token authentication is for real clusters; a test's throwaway local Ray runs without it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs the real local Ray (``ray_local``) is ``slow``, in whichever file it is:
    starting Ray alone takes several seconds. Other slow tests carry the marker themselves."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def cache_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ``XDG_CACHE_HOME`` holding the default synthetic cohort, as ``study.launch`` lays it out."""
    from study import synthetic

    home = tmp_path_factory.mktemp("cache")
    synthetic.write_cohort(home / "mri-unlearning-study" / f"synthetic-v{synthetic.GENERATOR_VERSION}")
    return home


@pytest.fixture(scope="session")
def cohort_root(cache_home: Path) -> Path:
    """The folder of the synthetic cohort, in MRBrainS18's layout (10 subjects)."""
    from study import synthetic

    return cache_home / "mri-unlearning-study" / f"synthetic-v{synthetic.GENERATOR_VERSION}"


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, temporary files in a short folder (Unix socket limit)."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ray-")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_cohort(cohort_root: Path):
    """Forget 070, retain 1 and 4, holdout 101, preprocessed to 8 x 32 x 32."""
    from study.data import find_subjects, load_cohort, resolve_split

    split = resolve_split(find_subjects(cohort_root), ["070"], ["1", "4"], ["101"], "test")
    return load_cohort(cohort_root, split, (8, 32, 32), "4class")
