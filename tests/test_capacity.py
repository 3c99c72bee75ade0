"""How many trials a study keeps in flight: the cluster's slots now, up to what its
autoscaler may add, read from Ray's own record of the autoscaler's worker groups."""

from __future__ import annotations

import pytest
from ray.core.generated import autoscaler_pb2

from study.run import cluster
from study.run.cluster import DEFAULT_TRIALS_IN_FLIGHT, Capacity

GPU_TRIAL = {"CPU": 4.0, "GPU": 1.0}
HEAD = {"CPU": 4.0, "memory": 1e10}
GPU_NODE = {"CPU": 8.0, "GPU": 1.0}


def _autoscaler(monkeypatch: pytest.MonkeyPatch, *groups: tuple[dict[str, float], int]) -> None:
    """Ray's record of the autoscaler's worker groups, as autoscaler v2 writes it to the GCS."""
    from ray._private.state import state

    config = autoscaler_pb2.ClusterConfig(
        node_group_configs=[
            autoscaler_pb2.NodeGroupConfig(
                name=f"g{i}", resources={k: int(v) for k, v in resources.items()}, max_count=most
            )
            for i, (resources, most) in enumerate(groups)
        ]
    )
    monkeypatch.setattr(state, "get_cluster_config", lambda: config if groups else None)


@pytest.fixture
def alive(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, float]]:
    """The nodes alive now (a head without GPUs and one GPU worker); a test may add more."""
    nodes = [HEAD, GPU_NODE]
    monkeypatch.setattr(cluster, "_nodes", lambda: list(nodes))
    return nodes


def test_an_autoscaling_cluster_keeps_its_maximum_in_flight(monkeypatch, alive):
    _autoscaler(monkeypatch, (HEAD, 1), (GPU_NODE, 8), ({"CPU": 64.0}, 4))  # the CPU group fits none
    capacity = Capacity(GPU_TRIAL, local=False)
    assert capacity.slots() == 1
    assert capacity.autoscaler_slots() == 8
    count, why = capacity.explain()
    assert count == 8 and "autoscaler's maximum, 8" in why


def test_without_the_autoscalers_maximum_a_joined_cluster_keeps_the_default_or_its_slots(monkeypatch, alive):
    _autoscaler(monkeypatch)  # no autoscaler, or v1: Ray does not know the groups
    capacity = Capacity(GPU_TRIAL, local=False)
    assert capacity() == DEFAULT_TRIALS_IN_FLIGHT
    alive.extend([GPU_NODE] * 11)  # nodes joined by hand: 12 slots now
    assert capacity() == 12


def test_an_unbounded_group_a_local_ray_and_a_fixed_setting(monkeypatch, alive):
    _autoscaler(monkeypatch, (GPU_NODE, -1))
    assert Capacity(GPU_TRIAL, local=False).autoscaler_slots() is None  # no limit: not a figure
    assert Capacity(GPU_TRIAL, local=False)() == DEFAULT_TRIALS_IN_FLIGHT
    assert Capacity(GPU_TRIAL, local=True)() == 1  # this machine's Ray never grows
    assert Capacity({"CPU": 1.0}, local=True)() == 12  # 4 + 8 CPUs, one per trial
    assert Capacity(GPU_TRIAL, fixed=3, local=False).explain() == (3, "max_trials_in_flight")
