"""``python -m study.bench data``: NIfTI decodes and bytes read by one whole study.

A smoke study runs on a local Ray started here, in a fresh cache directory (so the
synthetic cohort is written first, as on a new machine). Every ``nibabel.load`` in the
driver and in every Ray worker (Ray's ``worker_process_setup_hook``) appends the file it
decodes to a log; the bench then compares what was read with the cohort on disk: one
pass over the cohort reads each file once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

#: The environment variable naming the decode log, set for the driver and every worker.
LOG_VARIABLE = "STUDY_BENCH_DECODE_LOG"


def count_decodes() -> None:
    """Wraps ``nibabel.load`` so that each call appends its path to the decode log."""
    import nibabel

    if getattr(nibabel.load, "counted", False) or not os.environ.get(LOG_VARIABLE):
        return
    load = nibabel.load

    def counted(filename: Any, **kwargs: Any) -> Any:
        with open(os.environ[LOG_VARIABLE], "a") as log:
            log.write(f"{os.getpid()}\t{Path(filename).resolve()}\n")
        return load(filename, **kwargs)

    counted.counted = True  # type: ignore[attr-defined]
    nibabel.load = counted


def run(preset: str = "smoke") -> list[dict[str, Any]]:
    """One row per file kind (images, labels) and a total: decodes, files, bytes, passes."""
    import ray

    from search_spaces import check_config
    from study.cohort import synthetic
    from study.config import load_config
    from study.launch import run_study

    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    log = work / "decodes.tsv"
    log.touch()
    os.environ[LOG_VARIABLE] = str(log)
    count_decodes()
    config = load_config(preset, overrides={"run_dir": str(work / "run"), "cache_dir": str(work / "cache")})
    check_config(config)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=str(work / "ray"),
        runtime_env={
            "worker_process_setup_hook": "study.bench.data.count_decodes",
            "env_vars": {LOG_VARIABLE: str(log)},
        },
    )
    try:
        run_study(config)
        return decode_rows(log, synthetic.cohort_folder(work / "cache"), os.getpid())
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def decode_rows(log: Path, cohort_root: Path, driver: int) -> list[dict[str, Any]]:
    """One row per file kind of the cohort under ``cohort_root`` (and the subjects read): its
    files and bytes, and the decodes, bytes read and passes the log records (``driver``: the
    pid of the study's driver)."""
    decodes = [line.split("\t") for line in log.read_text().splitlines()]
    on_disk = {path.resolve(): path.stat().st_size for path in cohort_root.rglob("*.nii.gz")}
    # Only the subjects the study uses count as the cohort (the synthetic cohort has spares).
    used = {Path(path) for _, path in decodes}
    subjects = {path.parent.parent if path.parent.name == "pre" else path.parent for path in used}
    cohort = {path: size for path, size in on_disk.items() if any(s in path.parents for s in subjects)}
    rows = []
    for kind, chosen in (
        ("images", lambda p: p.parent.name == "pre"),
        ("labels", lambda p: p.parent.name != "pre"),
    ):
        files = {path: size for path, size in cohort.items() if chosen(path)}
        reads = Counter(Path(path) for _, path in decodes if chosen(Path(path)))
        read_bytes = sum(files.get(path, 0) * count for path, count in reads.items())
        rows.append(
            {
                "files": kind,
                "in the cohort": len(files),
                "bytes in the cohort": sum(files.values()),
                "decodes": sum(reads.values()),
                "bytes read": read_bytes,
                "passes": read_bytes / max(1, sum(files.values())),
                "decodes outside the driver": sum(
                    1 for pid, path in decodes if int(pid) != driver and chosen(Path(path))
                ),
            }
        )
    return rows
