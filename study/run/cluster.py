"""Joining a Ray cluster (or starting a local one) and checking it can run the study.

Joining ships this package to the workers (``runtime_env`` ``py_modules``), so a worker node
needs only the dependencies. Every request is checked against the cluster's nodes before
any compute: a trial no node can hold is a one-line error, never an endless wait.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.config import StudyConfig, StudyError
from study.run.storage import ExperimentStorage

# Ray's Unix sockets live in <temp>/session_<date>_<time>_<usec>_<pid>/sockets/<name>, and a
# socket path may not exceed 107 bytes; the session part takes about 64 of them.
_MAX_TEMP_DIR_CHARS = 40
_PROBE_TIMEOUT_S = 10.0
#: The packages that trials import, shipped to every worker when joining a cluster.
PACKAGES = ("study", "trainables", "search_spaces", "analysis")
#: Cores from which a local Ray starts its dashboard unless ``dashboard`` says otherwise.
DASHBOARD_MIN_CPUS = 4
#: Trials kept in flight on a joined cluster whose autoscaler does not tell Ray its maximum
#: (none of Ray 2.60's does): enough pending trials for an autoscaler to see the demand.
DEFAULT_TRIALS_IN_FLIGHT = 8


@dataclass(frozen=True)
class Connection:
    """The Ray this study runs on: its dashboard URL (if any), and whether we started it."""

    dashboard: str | None
    local: bool


def _temp_dir(run_dir: Path) -> Path:
    """Ray's temporary folder: inside the run directory when its path is short enough and
    ASCII (Ray encodes its session paths as ASCII)."""
    inside = run_dir.resolve() / "ray"
    if len(str(inside)) <= _MAX_TEMP_DIR_CHARS and str(inside).isascii():
        return inside
    return Path(tempfile.mkdtemp(prefix="ray-"))


def _probe(address: str) -> None:
    """Raises ``StudyError`` unless something listens at ``host:port`` (Ray itself would
    retry an unreachable address for minutes)."""
    target = address.split("://", 1)[-1].rstrip("/")  # ray://host:10001, http://host:8265, host:6379
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port ("auto" and the like): Ray resolves it and fails fast
    try:
        socket.create_connection((host, int(port)), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise StudyError(
            f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one "
            "with `ray start --head` or pass the head node's address"
        ) from None


def runtime_env() -> dict:
    """The job's runtime environment: this package's modules, so workers need only the dependencies."""
    modules = [sys.modules.get(name) or __import__(name) for name in PACKAGES]
    return {"py_modules": modules}


def connect(config: StudyConfig, run_dir: Path) -> Connection:
    """Connects to Ray.

    An already initialised Ray (a test's, a notebook's) is used as it is. ``config.address``
    (or ``RAY_ADDRESS``) joins a running cluster and ships this package to it; otherwise a
    local Ray starts with its temporary files under the run directory and the dashboard
    bound to ``config.dashboard_host`` (127.0.0.1, this machine only, unless set otherwise);
    with ``config.dashboard`` unset, only where this machine has ``DASHBOARD_MIN_CPUS`` cores.
    """
    import ray

    address = config.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        _probe(address)
    if ray.is_initialized():
        return Connection(None, False)
    if address:
        try:
            context = ray.init(address=address, runtime_env=runtime_env(), log_to_driver=True)
        except ConnectionError as exc:
            raise StudyError(f"--address {address}: {exc}") from None
        return Connection(context.dashboard_url or None, False)
    dashboard = config.dashboard
    if dashboard is None:
        dashboard = (os.cpu_count() or 1) >= DASHBOARD_MIN_CPUS
    context = ray.init(
        include_dashboard=dashboard,
        dashboard_host=config.dashboard_host,
        _temp_dir=str(_temp_dir(run_dir)),
    )
    url = context.dashboard_url
    return Connection((f"http://{url}" if url and not url.startswith("http") else url) or None, True)


def trial_request(config: StudyConfig) -> dict[str, float]:
    """The Ray resources one trial (and one baseline task) asks for."""
    request = {"CPU": float(config.cpus_per_trial), "GPU": float(config.gpus_per_trial)}
    return {k: v for k, v in (request | config.trial_resources).items() if v > 0}


def task_options(config: StudyConfig, cpus: int) -> dict:
    """``ray.remote`` options for a task that needs what a trial needs, with ``cpus`` CPUs."""
    return {"num_cpus": cpus, "num_gpus": config.gpus_per_trial, "resources": dict(config.trial_resources)}


def remote(config: StudyConfig, function: Callable[..., Any], cpus: int | None = None) -> Any:
    """``function`` as a Ray remote function whose tasks ask for what a trial asks for, with
    ``cpus`` CPUs (default: a trial's)."""
    import ray

    return ray.remote(**task_options(config, cpus or config.cpus_per_trial))(function)


def _fits(node: dict[str, float], request: dict[str, float]) -> int:
    """How many requests ``node`` (its total resources) holds at once."""
    return min(math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in request.items())


def _nodes() -> list[dict[str, float]]:
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def _why_not(request: dict[str, float], nodes: list[dict[str, float]]) -> str:
    flags = {"CPU": "--cpus-per-trial", "GPU": "--gpus-per-trial"}
    for key, amount in request.items():
        most = max((n.get(key, 0.0) for n in nodes), default=0.0)
        if most < amount:
            flag = flags.get(key, f"trial_resources.{key}")
            return (
                f"{flag} {amount:g}: no node of the cluster has {amount:g} {key} "
                f"({len(nodes)} nodes, at most {most:g} {key} on one); lower {flag} or add such nodes"
            )
    have = ", ".join(f"{k} {v:g}" for k, v in request.items())
    return (
        f"no single node of the cluster has {have} at once ({len(nodes)} nodes); lower the per-trial request"
    )


def _autoscaler_groups() -> list[tuple[dict[str, float], int]] | None:
    """``(resources of one node, most nodes)`` of each worker group the autoscaler may start
    (most nodes -1: no limit), as the autoscaler records them in the cluster's GCS, or
    ``None`` where it does not: no autoscaler, and every autoscaler of Ray 2.60 (Ray's own
    readers, Ray Data's and Train's, wait for a later autoscaler v2 that writes them)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # a private API: an older or newer Ray without it is "not known"
        return None
    if config is None or not config.node_group_configs:
        return None
    return [(dict(group.resources), int(group.max_count)) for group in config.node_group_configs]


@dataclass(frozen=True)
class Capacity:
    """How many trials the study keeps in flight (running, or pending so that an autoscaler
    sees the demand); read again while the study runs, so it follows nodes that join.

    ``fixed`` (``max_trials_in_flight``) wins when set. Otherwise: the trials the nodes alive
    now hold at once, up to what the autoscaler's worker groups would hold at their maximum
    where Ray exposes it; on a joined cluster where it does not, at least
    ``DEFAULT_TRIALS_IN_FLIGHT``; a local Ray never grows, so there it is the slots alone.
    """

    request: dict[str, float]
    fixed: int = 0
    local: bool = True

    @classmethod
    def of(cls, config: StudyConfig, connection: Connection) -> Capacity:
        return cls(trial_request(config), config.max_trials_in_flight, connection.local)

    def slots(self) -> int:
        """Trials the nodes alive now hold at once."""
        return sum(_fits(node, self.request) for node in _nodes())

    def autoscaler_slots(self) -> int | None:
        """Trials the autoscaler's worker groups hold at their maximum; ``None``: not known
        or unbounded."""
        groups = _autoscaler_groups()
        if groups is None or any(most < 0 and _fits(node, self.request) for node, most in groups):
            return None
        return sum(most * _fits(node, self.request) for node, most in groups)

    def __call__(self) -> int:
        return self.explain()[0]

    def explain(self) -> tuple[int, str]:
        """``(trials in flight, why that many)``."""
        if self.fixed:
            return self.fixed, "max_trials_in_flight"
        now = self.slots()
        if self.local:
            return max(now, 1), "the slots of this machine's Ray"
        most = self.autoscaler_slots()
        if most is not None:
            return max(now, most, 1), f"up to the autoscaler's maximum, {most}"
        return max(now, DEFAULT_TRIALS_IN_FLIGHT), (
            f"the slots alive, at least {DEFAULT_TRIALS_IN_FLIGHT} (the autoscaler's maximum is "
            "not known to Ray; set max_trials_in_flight to it)"
        )


def check_resources(config: StudyConfig) -> int:
    """How many trials the cluster runs at once; a ``StudyError`` if no node can hold one.

    With ``config.resource_wait_s`` (an autoscaling cluster), asks the autoscaler for such a
    node and waits for it up to that long, saying so, before giving up the same way.
    """
    request = trial_request(config)
    deadline = time.monotonic() + config.resource_wait_s
    asked = False
    while True:
        nodes = _nodes()
        slots = sum(_fits(node, request) for node in nodes)
        if slots:
            return slots
        if time.monotonic() >= deadline:
            raise StudyError(_why_not(request, nodes))
        if not asked:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[request])
            print(
                f"waiting up to {config.resource_wait_s} s for the autoscaler to add a node with "
                + ", ".join(f"{k} {v:g}" for k, v in request.items()),
                flush=True,
            )
            asked = True
        time.sleep(5)


def check_cluster(
    config: StudyConfig, storage: ExperimentStorage, connection: Connection, resuming: bool
) -> int:
    """Trials the cluster runs at once, after refusing (``StudyError``) requests no node can
    hold and storage that cannot take the experiment; shuts down a Ray it started on refusal."""
    import ray

    try:
        slots = check_resources(config)
        storage.check_writable()
        if not resuming and storage.experiment_exists():
            raise StudyError(
                f"storage {storage.root} already holds an experiment named {storage.name}; "
                "choose another --run-dir name or --storage"
            )
        return slots
    except BaseException:
        if connection.local:
            ray.shutdown()
        raise


@contextmanager
def joined(config: StudyConfig, address: str, run_dir: Path) -> Iterator[None]:
    """Joins the Ray cluster at ``address`` for the ``with`` block (a Ray this process has
    already stays as it is), after refusing (``StudyError``) a request no node can hold: one
    line, not an endless wait."""
    import ray

    joining = not ray.is_initialized()
    connect(dataclasses.replace(config, address=address), run_dir)
    try:
        check_resources(config)
        yield
    finally:
        if joining:
            ray.shutdown()
