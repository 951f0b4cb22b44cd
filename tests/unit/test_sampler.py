"""The sampler over a session and a GPU reader written here: snapshots, a stuck GPU, lost GPUs.

The reader stands in for NVML (which the process tests drive through the fake library); here the
sampler's own logic is checked: deadlines, identity kept for a GPU that is down, process owners.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Callable

import pytest

from exporter import sampler as sampler_module
from exporter.kubelet import PodResourcesClient
from exporter.nvml_reader import GpuReading, NvmlSession, RawProcess
from exporter.processes import ProcessOwner, ProcessResolver
from exporter.sampler import Sampler
from exporter.snapshot import DriverInfo, GpuSample, PodContainer

pytestmark = pytest.mark.unit

DRIVER = DriverInfo(driver_version="550.54.15", cuda_version="12.4", nvml_version="12.550")


class Session(NvmlSession):
    """An NVML session that is always up with ``count`` GPUs, unless told otherwise."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.available = True
        self.driver = DRIVER
        self.resets: list[str] = []

    def ensure(self) -> bool:
        return self.available

    def device_count(self) -> int:
        return self.count

    def reset(self, reason: str) -> None:
        self.resets.append(reason)

    def close(self) -> None:
        pass


class Owners(ProcessResolver):
    """Process owners from a table instead of psutil."""

    def __init__(self, table: dict[int, ProcessOwner]) -> None:
        super().__init__()
        self.table = table

    def resolve(self, pids: set[int]) -> dict[int, ProcessOwner]:
        return {pid: self.table[pid] for pid in pids if pid in self.table}


class Reader:
    """GPU readings by index; a GPU can be made to hang or to fail."""

    def __init__(self) -> None:
        self.temperature = 40.0
        self.idle = False  # no process on any GPU
        self.hanging: dict[int, threading.Event] = {}
        self.failing: set[int] = set()
        self.calls: dict[int, int] = {}
        self.options: dict[int, dict[str, object]] = {}  # each GPU's last call's
        self.mig_mode: bool | None = None
        self.memory = 2**30  # each GPU's process's
        self.returned: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def __call__(self, index: int, **options: object) -> GpuReading:
        with self._lock:
            self.calls[index] = self.calls.get(index, 0) + 1
            self.options[index] = options
        release = self.hanging.get(index)
        if release is not None:
            release.wait(timeout=30)
            self.returned[index].set()
        if index in self.failing:
            raise RuntimeError(f"GPU {index} read failed")
        sample = GpuSample(
            index=index,
            up=True,
            uuid=f"GPU-{index}",
            name="NVIDIA H100",
            serial=f"S{index}",
            pci_bus_id=f"0000:{index:02x}:00.0",
            temperature_celsius=self.temperature + index,
            mig_mode=self.mig_mode,
        )
        if self.idle:
            return GpuReading(sample, ())
        return GpuReading(sample, (RawProcess(100 + index, "compute", self.memory),))


@pytest.fixture
def reader() -> Iterator[Reader]:
    reader = Reader()
    yield reader
    for event in reader.hanging.values():
        event.set()  # let a stuck reader thread finish


@pytest.fixture
def make_sampler() -> Iterator[Callable[..., Sampler]]:
    made: list[Sampler] = []

    def make(session: Session, reader: Reader, **options: object) -> Sampler:
        owners = Owners({100: ProcessOwner("alice", "python a.py")})
        sampler = Sampler(
            hostname="node-1", session=session, resolver=owners, read=reader, **options
        )
        made.append(sampler)
        return sampler

    yield make
    for sampler in made:
        sampler.stop()


def test_before_the_first_pass_the_snapshot_is_empty(make_sampler, reader) -> None:
    sampler = make_sampler(Session(2), reader)
    assert not sampler.ready
    snapshot = sampler.latest()
    assert (snapshot.sequence, snapshot.timestamp, snapshot.gpus) == (0, 0.0, ())
    assert snapshot.host.hostname == "node-1"


def test_a_pass_publishes_every_gpu_with_process_owners(make_sampler, reader) -> None:
    sampler = make_sampler(Session(2), reader)
    snapshot = sampler.sample_once()
    assert sampler.ready and sampler.latest() is snapshot
    assert snapshot.sequence == 1
    assert snapshot.driver == DRIVER
    assert [(g.index, g.up, g.uuid, g.temperature_celsius) for g in snapshot.gpus] == [
        (0, True, "GPU-0", 40.0),
        (1, True, "GPU-1", 41.0),
    ]
    assert [(p.pid, p.user, p.command, p.gpu_memory_bytes) for p in snapshot.gpus[0].processes] == [
        (100, "alice", "python a.py", 2**30)
    ]
    # pid 101 has no known owner: its memory still counts, user and command are empty.
    assert [(p.pid, p.user, p.command) for p in snapshot.gpus[1].processes] == [(101, "", "")]
    assert [(c.name, c.success) for c in snapshot.collectors] == [
        ("nvml", True),
        ("processes", True),
        ("host", True),
    ]
    reader.temperature = 50.0
    second = sampler.sample_once()
    assert second.sequence == 2
    assert [g.temperature_celsius for g in second.gpus] == [50.0, 51.0]


def test_without_processes_the_lists_stay_empty(make_sampler, reader) -> None:
    sampler = make_sampler(Session(1), reader, include_processes=False)
    (gpu,) = sampler.sample_once().gpus
    assert gpu.processes == ()


def test_a_stuck_gpu_is_down_with_its_identity_and_not_asked_again(make_sampler, reader) -> None:
    sampler = make_sampler(Session(2), reader, gpu_timeout=0.3)
    sampler.sample_once()  # both answer: identities are known
    reader.hanging[1] = threading.Event()
    reader.returned[1] = threading.Event()
    reader.temperature = 60.0

    stuck = sampler.sample_once()
    fresh, down = stuck.gpus
    assert (fresh.up, fresh.temperature_celsius) == (True, 60.0)
    assert down == GpuSample(
        index=1,
        up=False,
        uuid="GPU-1",
        name="NVIDIA H100",
        serial="S1",
        pci_bus_id="0000:01:00.0",
    )  # identity kept, no readings, no processes
    assert dict((c.name, c.success) for c in stuck.collectors)["nvml"] is False

    calls = reader.calls[1]
    again = sampler.sample_once()
    assert reader.calls[1] == calls  # still stuck in the first call: no second call piled on
    assert again.gpus[1].up is False

    reader.hanging.pop(1).set()
    assert reader.returned[1].wait(timeout=5)  # the stuck call returns
    recovered = sampler.sample_once()
    assert [g.up for g in recovered.gpus] == [True, True]
    assert recovered.gpus[1].temperature_celsius == 61.0


def test_a_failing_gpu_is_down_and_keeps_its_identity(make_sampler, reader) -> None:
    session = Session(2)
    sampler = make_sampler(session, reader)
    sampler.sample_once()
    reader.failing.add(0)
    snapshot = sampler.sample_once()
    assert [(g.up, g.uuid, g.temperature_celsius) for g in snapshot.gpus] == [
        (False, "GPU-0", None),
        (True, "GPU-1", 41.0),
    ]
    assert session.resets == []  # a plain read error is not a lost session


def test_a_gpu_never_seen_up_has_no_identity(make_sampler, reader) -> None:
    reader.failing.add(0)
    sampler = make_sampler(Session(1), reader)
    (gpu,) = sampler.sample_once().gpus
    assert gpu == GpuSample(index=0, up=False)


def test_without_nvml_only_host_facts_are_published(make_sampler, reader) -> None:
    session = Session(2)
    session.available = False
    sampler = make_sampler(session, reader)
    snapshot = sampler.sample_once()
    assert snapshot.gpus == ()
    assert dict((c.name, c.success) for c in snapshot.collectors) == {
        "nvml": False,
        "processes": True,
        "host": True,
    }
    assert reader.calls == {}
    assert sampler.ready  # the exporter serves host facts and says NVML failed


def test_fewer_gpus_after_a_reload_drop_the_missing_ones(make_sampler, reader) -> None:
    session = Session(3)
    sampler = make_sampler(session, reader)
    assert len(sampler.sample_once().gpus) == 3
    session.count = 1
    assert [g.index for g in sampler.sample_once().gpus] == [0]
    session.count = 2
    assert [(g.index, g.up) for g in sampler.sample_once().gpus] == [(0, True), (1, True)]


class Kubelet(PodResourcesClient):
    """The kubelet's answer from a table, counting the times it is asked."""

    def __init__(self, holders: dict[str, tuple[PodContainer, ...]]) -> None:
        super().__init__(socket_path="/nonexistent/kubelet.sock")
        self.holders = holders
        self.asked = 0

    def gpu_devices(self) -> dict[str, tuple[PodContainer, ...]]:
        self.asked += 1
        return self.holders


TRAIN = PodContainer(namespace="ml", pod="train-0", container="worker")


def test_the_kubelet_names_the_pods_of_gpus_without_processes_only_when_asked(
    make_sampler, reader
) -> None:
    reader.idle = True
    kubelet = Kubelet({"GPU-1": (TRAIN,)})
    (gpu0, gpu1) = make_sampler(Session(2), reader, pod_resources=kubelet).sample_once().gpus
    assert (kubelet.asked, gpu1.pods) == (0, ())  # nothing runs: no pod needed
    sampler = make_sampler(Session(2), reader, pod_resources=kubelet, pods_of_idle_gpus=True)
    (gpu0, gpu1) = sampler.sample_once().gpus
    assert kubelet.asked == 1
    assert (gpu0.pods, gpu1.pods) == ((), (TRAIN,))


def _unsupported(reader: Reader, index: int) -> object:
    """The set of NOT_SUPPORTED getters the sampler gave GPU ``index``'s last read."""
    unsupported = reader.options[index]["unsupported"]
    assert unsupported is not None
    return unsupported


def test_a_gpu_keeps_its_unsupported_getters_from_pass_to_pass(make_sampler, reader) -> None:
    sampler = make_sampler(Session(2), reader)
    sampler.sample_once()
    first = [_unsupported(reader, 0), _unsupported(reader, 1)]
    assert first[0] is not first[1]  # one per GPU
    sampler.sample_once()
    sampler.sample_once()
    assert [_unsupported(reader, 0), _unsupported(reader, 1)] == first


@pytest.mark.parametrize("cause", ["nvml reinit", "time"])
def test_a_reinit_or_time_asks_every_getter_again(make_sampler, reader, monkeypatch, cause) -> None:
    session = Session(1)
    sampler = make_sampler(session, reader)
    sampler.sample_once()
    before = _unsupported(reader, 0)
    if cause == "nvml reinit":
        session.generation += 1  # what a successful re-init does
    else:
        monkeypatch.setattr(sampler_module, "REPROBE_SECONDS", 0.0)
    sampler.sample_once()
    assert _unsupported(reader, 0) is not before


def test_a_gpu_back_up_or_in_another_mig_mode_is_asked_every_getter_again(
    make_sampler, reader
) -> None:
    sampler = make_sampler(Session(1), reader)
    sampler.sample_once()
    sampler.sample_once()
    before = _unsupported(reader, 0)
    reader.mig_mode = True
    sampler.sample_once()  # this read finds the new mode
    sampler.sample_once()
    after_mig = _unsupported(reader, 0)
    assert after_mig is not before
    sampler.sample_once()
    assert _unsupported(reader, 0) is after_mig  # the new mode stays: nothing to forget again
    reader.failing.add(0)
    sampler.sample_once()
    reader.failing.discard(0)
    sampler.sample_once()
    assert _unsupported(reader, 0) is not after_mig


def test_a_process_sample_follows_its_owner_and_memory_from_pass_to_pass(
    make_sampler, reader
) -> None:
    sampler = make_sampler(Session(1), reader)
    first = sampler.sample_once().gpus[0].processes
    assert sampler.sample_once().gpus[0].processes == first  # nothing changed
    sampler._resolver.table[100] = ProcessOwner("bob", "python b.py")
    reader.memory = 2**31
    (process,) = sampler.sample_once().gpus[0].processes
    assert (process.pid, process.user, process.command, process.gpu_memory_bytes) == (
        100,
        "bob",
        "python b.py",
        2**31,
    )
