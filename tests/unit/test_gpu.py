"""Unit tests for inferd.gpu: no GPU or NVML driver needed."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest

from inferd.gpu import (
    GpuDevice,
    GpuPlan,
    GpuRequest,
    assign_gpus,
    limit_to_visible,
    read_inventory,
    visible_devices_env,
)

GIB = 1024**3


def device(index: int, free_gib: int = 10, total_gib: int = 16) -> GpuDevice:
    return GpuDevice(index, f"GPU-{index:04d}", "Fake GPU", total_gib * GIB, free_gib * GIB)


def inventory(count: int, free_gib: int = 10) -> tuple[GpuDevice, ...]:
    return tuple(device(i, free_gib) for i in range(count))


def req(api: str = "x", replicas: int = 1, processes: int = 1, gpus: int = 1) -> GpuRequest:
    return GpuRequest(api, replicas, processes, gpus)


# --------------------------------------------------------------------------- assign_gpus


def test_replicas_spread_across_devices() -> None:
    plan = assign_gpus(inventory(4), [req(replicas=4)])
    assert plan.devices == {"x": ((0,), (1,), (2,), (3,))}
    assert plan.errors == {} and plan.warnings == ()


def test_spread_continues_across_apis() -> None:
    plan = assign_gpus(inventory(3), [req("a", replicas=2), req("b", replicas=1)])
    assert plan.devices == {"a": ((0,), (1,)), "b": ((2,),)}
    assert plan.warnings == ()


def test_most_free_memory_chosen_first() -> None:
    inv = (device(0, free_gib=2), device(1, free_gib=12), device(2, free_gib=8))
    plan = assign_gpus(inv, [req(replicas=3)])
    assert plan.devices["x"] == ((1,), (2,), (0,))


def test_load_beats_free_memory() -> None:
    # Device 1 is roomier but already hosts a replica: spreading wins.
    inv = (device(0, free_gib=2), device(1, free_gib=12))
    plan = assign_gpus(inv, [req(replicas=2)])
    assert plan.devices["x"] == ((1,), (0,))


def test_ties_broken_by_lower_index() -> None:
    inv = (device(2), device(0), device(1))  # inventory order must not matter
    plan = assign_gpus(inv, [req(replicas=3)])
    assert plan.devices["x"] == ((0,), (1,), (2,))


def test_multi_gpu_replicas_are_sorted_and_disjoint() -> None:
    inv = (device(0, 1), device(1, 9), device(2, 5), device(3, 7))
    plan = assign_gpus(inv, [req(replicas=2, gpus=2)])
    assert plan.devices["x"] == ((1, 3), (0, 2))
    assert plan.warnings == ()


def test_processes_of_a_replica_share_its_devices() -> None:
    plan = assign_gpus(inventory(4), [req(replicas=2, processes=3, gpus=2)])
    workers = plan.devices["x"]
    assert len(workers) == 6
    assert workers == ((0, 1),) * 3 + ((2, 3),) * 3
    # Worker w belongs to replica w // processes.
    assert all(workers[w] == workers[(w // 3) * 3] for w in range(6))


def test_gpu_zero_hides_all_gpus() -> None:
    plan = assign_gpus(inventory(2), [req(replicas=2, processes=2, gpus=0)])
    assert plan.devices == {"x": ((),) * 4}
    assert plan.errors == {} and plan.warnings == ()


def test_gpu_zero_apis_do_not_count_as_load() -> None:
    plan = assign_gpus(inventory(2), [req("cpu", replicas=5, gpus=0), req("g", replicas=2)])
    assert plan.devices["g"] == ((0,), (1,))
    assert plan.warnings == ()


def test_no_inventory_errors_only_gpu_apis() -> None:
    plan = assign_gpus((), [req("cpu", replicas=2, gpus=0), req("x", gpus=1)])
    assert plan.devices == {"cpu": ((), ())}
    assert plan.errors == {
        "x": 'api "x" asks for 1 GPU per replica (compute.gpu: 1) '
        "but no NVIDIA GPU is visible (NVML not available or no device)"
    }
    assert plan.warnings == ()


def test_too_few_gpus_error_names_both_numbers() -> None:
    plan = assign_gpus(inventory(2), [req("big", gpus=3), req("ok", gpus=1)])
    assert "big" not in plan.devices
    assert plan.errors["big"] == (
        'api "big" asks for 3 GPUs per replica (compute.gpu: 3) but only 2 NVIDIA GPUs are visible'
    )
    # A failed API takes no devices, so the next one still gets the first GPU.
    assert plan.devices == {"ok": ((0,),)}


def test_oversubscription_warns_once_per_api() -> None:
    plan = assign_gpus(inventory(2), [req(replicas=3)])
    assert plan.devices["x"] == ((0,), (1,), (0,))
    assert plan.warnings == ('api "x": 3 replicas x 1 GPU on 2 devices; devices are shared',)
    assert plan.errors == {}


def test_sharing_with_another_api_names_it() -> None:
    plan = assign_gpus(inventory(1), [req("a"), req("b", replicas=2)])
    assert plan.devices == {"a": ((0,),), "b": ((0,), (0,))}
    assert plan.warnings == ('api "b": 2 replicas x 1 GPU on 1 device; devices are shared with api "a"',)


def test_deterministic() -> None:
    inv = (device(3, 4), device(1, 9), device(0, 9), device(2, 1))
    requests = [req("a", replicas=3, processes=2, gpus=2), req("b", replicas=2), req("c", gpus=0)]
    first = assign_gpus(inv, requests)
    assert all(assign_gpus(inv, requests) == first for _ in range(5))
    assert assign_gpus(tuple(reversed(inv)), requests) == first


def test_plan_is_frozen() -> None:
    plan = assign_gpus(inventory(1), [req()])
    assert isinstance(plan, GpuPlan)
    with pytest.raises(AttributeError):
        plan.warnings = ("x",)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("replicas", "processes", "gpus"),
    [(0, 1, 1), (-1, 1, 1), (1, 0, 1), (1, 1, -1)],
)
def test_invalid_request_numbers_raise(replicas: int, processes: int, gpus: int) -> None:
    with pytest.raises(ValueError):
        GpuRequest("x", replicas, processes, gpus)


def test_invalid_device_numbers_raise() -> None:
    with pytest.raises(ValueError):
        GpuDevice(-1, "u", "n", 1, 1)
    with pytest.raises(ValueError):
        GpuDevice(0, "u", "n", 1, -1)


def test_duplicates_raise() -> None:
    with pytest.raises(ValueError, match="duplicate API"):
        assign_gpus(inventory(1), [req("x"), req("x")])
    with pytest.raises(ValueError, match="duplicate GPU"):
        assign_gpus((device(0), device(0)), [req()])


# --------------------------------------------------------------------------- visible_devices_env


def test_env_lists_devices() -> None:
    assert visible_devices_env((0, 2)) == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "0,2",
        "NVIDIA_VISIBLE_DEVICES": "0,2",
    }


def test_env_for_no_devices_hides_all() -> None:
    assert visible_devices_env(()) == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "",
        "NVIDIA_VISIBLE_DEVICES": "void",
    }


def test_env_checks_indexes() -> None:
    assert visible_devices_env([1], inventory(2))["CUDA_VISIBLE_DEVICES"] == "1"
    with pytest.raises(ValueError, match="not in the inventory"):
        visible_devices_env([2], inventory(2))
    with pytest.raises(ValueError):
        visible_devices_env([-1])
    with pytest.raises(ValueError):
        visible_devices_env([0, 0])


# --------------------------------------------------------------------------- read_inventory


@dataclass
class _Memory:
    total: int
    free: int
    used: int


class _FakeNVMLError(Exception):
    pass


def fake_nvml(devices: list[dict], init_error: bool = False, count_error: bool = False) -> types.ModuleType:
    """A tiny stand-in for pynvml; `calls` records what was called."""
    module = types.ModuleType("pynvml")
    module.calls = []  # type: ignore[attr-defined]
    module.NVMLError = _FakeNVMLError  # type: ignore[attr-defined]

    def record(name, result=None, error=False):
        def call(*args):
            module.calls.append(name)  # type: ignore[attr-defined]
            if error:
                raise _FakeNVMLError(name)
            return result(*args) if callable(result) else result

        return call

    module.nvmlInit = record("init", error=init_error)  # type: ignore[attr-defined]
    module.nvmlShutdown = record("shutdown")  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = record("count", len(devices), error=count_error)  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = record("handle", lambda i: devices[i])  # type: ignore[attr-defined]
    module.nvmlDeviceGetUUID = record("uuid", lambda h: h["uuid"])  # type: ignore[attr-defined]
    module.nvmlDeviceGetName = record("name", lambda h: h["name"])  # type: ignore[attr-defined]
    module.nvmlDeviceGetMemoryInfo = record("memory", _memory)  # type: ignore[attr-defined]
    return module


def _memory(handle: dict) -> _Memory:
    if handle.get("lost"):
        raise _FakeNVMLError("GPU is lost")
    return _Memory(handle["total"], handle["free"], handle["total"] - handle["free"])


def test_read_inventory_without_gpu_returns_empty() -> None:
    # This machine has pynvml installed but no driver and no GPU.
    assert read_inventory() == ()


def test_read_inventory_without_pynvml_returns_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    assert read_inventory() == ()


def test_read_inventory_reads_devices_bytes_or_str(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_nvml(
        [
            {"uuid": b"GPU-aaa", "name": b"NVIDIA A10G", "total": 24 * GIB, "free": 20 * GIB},
            {"uuid": "GPU-bbb", "name": "NVIDIA T4", "total": 16 * GIB, "free": 15 * GIB},
        ]
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert read_inventory() == (
        GpuDevice(0, "GPU-aaa", "NVIDIA A10G", 24 * GIB, 20 * GIB),
        GpuDevice(1, "GPU-bbb", "NVIDIA T4", 16 * GIB, 15 * GIB),
    )
    assert fake.calls[0] == "init" and fake.calls[-1] == "shutdown"
    assert fake.calls.count("shutdown") == 1


def test_read_inventory_init_failure_returns_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_nvml([], init_error=True)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert read_inventory() == ()
    assert fake.calls == ["init"]  # nothing to shut down when init failed


def test_read_inventory_query_failure_returns_empty_and_shuts_down(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_nvml([], count_error=True)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert read_inventory() == ()
    assert fake.calls == ["init", "count", "shutdown"]


def test_read_inventory_skips_a_broken_device(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_nvml(
        [
            {"uuid": "GPU-lost", "name": "X", "total": 1, "free": 1, "lost": True},
            {"uuid": "GPU-ok", "name": "Y", "total": 8 * GIB, "free": 8 * GIB},
        ]
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert read_inventory() == (GpuDevice(1, "GPU-ok", "Y", 8 * GIB, 8 * GIB),)
    assert fake.calls[-1] == "shutdown"


def test_read_inventory_never_raises_on_shutdown_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_nvml([{"uuid": "GPU-a", "name": "A", "total": 2, "free": 1}])

    def bad_shutdown() -> None:
        raise _FakeNVMLError("shutdown")

    fake.nvmlShutdown = bad_shutdown  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert read_inventory() == (GpuDevice(0, "GPU-a", "A", 2, 1),)



def test_running_replicas_count_as_load_and_stay_put() -> None:
    inventory = [GpuDevice(0, "u0", "g", 80, 10), GpuDevice(1, "u1", "g", 80, 70)]
    # "a" already runs on device 0, which therefore shows less free memory; "b" is new
    plan = assign_gpus(inventory, [GpuRequest("b", 1, 1, 1)], placed={"a": [(0,)]})
    assert plan.devices == {"b": ((1,),)}
    assert plan.warnings == ()
    crowded = assign_gpus(inventory, [GpuRequest("c", 1, 1, 1)], placed={"a": [(0,)], "b": [(1,)]})
    assert len(crowded.warnings) == 1 and "devices are shared" in crowded.warnings[0]


def test_a_gpu_hint_starts_with_the_gpus_the_node_has_and_says_so() -> None:
    from inferd.gpu import hinted_gpus

    assert hinted_gpus(2, 0, hint=True) == (0, "hub.json asks for 2 GPU(s) and this node has 0: the worker starts with 0")
    assert hinted_gpus(2, 4, hint=True) == (2, None)
    assert hinted_gpus(2, 0, hint=False) == (2, None)  # compute.gpu in cortex.yaml stays strict


# --------------------------------------------------------------------------- the daemon's CUDA_VISIBLE_DEVICES


@pytest.mark.parametrize(("visible", "kept"), [
    (None, [0, 1, 2, 3]),          # unset: every GPU
    ("1", [1]),
    ("3,1", [3, 1]),               # CUDA's order is the user's order
    (" 2 , 0 ", [2, 0]),
    ("GPU-0002", [2]),             # a UUID
    ("GPU-0003,0", [3, 0]),        # UUIDs and indexes mixed
    ("1,7,2", [1]),                # CUDA stops at the first entry naming no device
    ("1,1", [1]),                  # ... and at a repeated one
    ("GPU-000", []),               # a prefix that names four GPUs names none
    ("", []), ("-1", []), ("void", []),
])
def test_daemon_cuda_visible_devices_limits_the_inventory(visible: str | None, kept: list[int]) -> None:
    assert [d.index for d in limit_to_visible(inventory(4), visible)] == kept


def test_read_inventory_honours_the_daemons_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_nvml([{"uuid": f"GPU-{i}", "name": "NVIDIA H200", "total": 141 * GIB, "free": 140 * GIB}
                      for i in range(3)])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert [(d.index, d.uuid) for d in read_inventory()] == [(2, "GPU-2")]  # NVML's index, for pinning
