"""Joining a Ray cluster, or starting a local one with its dashboard on 127.0.0.1."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from study.config import StudyConfig

# Ray's Unix sockets live in <temp>/session_<date>_<time>_<usec>_<pid>/sockets/<name>, and a
# socket path may not exceed 107 bytes; the session part takes about 64 of them.
_MAX_TEMP_DIR_CHARS = 40


def _temp_dir(run_dir: Path) -> Path:
    """Ray's temporary folder: inside the run directory when its path is short enough."""
    inside = run_dir.resolve() / "ray"
    if len(str(inside)) <= _MAX_TEMP_DIR_CHARS:
        return inside
    return Path(tempfile.mkdtemp(prefix="ray-"))


def connect(config: StudyConfig, run_dir: Path) -> tuple[str | None, bool]:
    """Connects to Ray; returns ``(dashboard URL or None, whether Ray was started locally)``.

    An already initialised Ray (a test's, a notebook's) is used as it is. ``config.address``
    (or ``RAY_ADDRESS``) joins a running cluster; otherwise a local Ray starts with its
    temporary files under the run directory and the dashboard bound to
    ``config.dashboard_host`` (127.0.0.1, this machine only, unless the user sets another).
    """
    import ray

    if ray.is_initialized():
        return None, False
    address = config.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        context = ray.init(address=address, log_to_driver=True)
        return context.dashboard_url or None, False
    context = ray.init(
        include_dashboard=config.dashboard,
        dashboard_host=config.dashboard_host,
        _temp_dir=str(_temp_dir(run_dir)),
    )
    url = context.dashboard_url
    return (f"http://{url}" if url and not url.startswith("http") else url) or None, True
