"""The sampler: reads NVML and psutil every interval into an immutable snapshot.

Scrapes never touch NVML; they render :meth:`Sampler.latest`. GPUs are read in parallel, one read
per GPU at a time, and a pass waits for them at most half an interval (or the GPU timeout, if
shorter), so a slow GPU never delays the others. A read still running when the pass ends carries
over to the next pass: until it is ``gpu_timeout`` old the GPU keeps its last reading; after that
it is reported down (with its last known identity) at once in every pass, without waiting for it
again, until the call returns. A hang is logged once when it starts and once when it ends. A hang
in a global call (device count) stalls the whole pass instead; scrapes then keep answering from
the last snapshot and ``gpu_exporter_last_collect_timestamp_seconds`` shows the age.

Processes get their owner, command and cgroup attribution from the :class:`ProcessResolver`
(cached per process) and, when a kubelet socket is configured, the name and namespace of the pod
the kubelet handed their GPU (or, under MIG, their MIG device) to.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable

from exporter.events import XidWatcher
from exporter.gpm import GpmCollector
from exporter.host import read_host
from exporter.kubelet import PodResourcesClient
from exporter.nvml_reader import (
    IDLE_PROCESS,
    GpuReading,
    NvmlSession,
    ProcessUtilization,
    RawProcess,
    Unsupported,
    is_session_error,
    read_gpu,
)
from exporter.processes import ProcessOwner, ProcessResolver
from exporter.snapshot import (
    CollectorStatus,
    GpuSample,
    HostInfo,
    PodContainer,
    ProcessSample,
    Snapshot,
    empty_snapshot,
)

log = logging.getLogger(__name__)

_MAX_READER_THREADS = 32
# Memory repair, aggregate ECC, PCIe and NVLink change rarely and cost as much to read as the
# rest of a GPU; XIDs, the urgent signal, come from events as they happen.
HEALTH_SECONDS = 10.0
# A getter that answered NOT_SUPPORTED is not called again until then (or an NVML re-init, the
# GPU coming back, a change of its MIG mode): a driver that answered it by mistake costs a field
# for minutes, not for good.
REPROBE_SECONDS = 300.0


@dataclass(frozen=True)
class _Read:
    """One GPU's NVML read in flight, and when it began."""

    future: Future[GpuReading]
    started: float  # time.monotonic()
    generation: int  # the NVML session it was made in
    fresh_health: bool = True  # it reads the health fields rather than reusing earlier ones


class Sampler:
    """Owns the sampling thread and the latest snapshot."""

    def __init__(
        self,
        *,
        interval: float = 2.0,
        gpu_timeout: float = 5.0,
        include_processes: bool = True,
        hostname: str | None = None,
        session: NvmlSession | None = None,
        resolver: ProcessResolver | None = None,
        pcie_throughput: bool = False,
        xid_events: bool = True,
        read: Callable[..., GpuReading] = read_gpu,
        pod_resources: PodResourcesClient | None = None,
        gpm: GpmCollector | None = None,
        pods_of_idle_gpus: bool = False,
    ) -> None:
        self.interval = interval
        self._gpu_timeout = gpu_timeout
        self._include_processes = include_processes
        self._hostname = hostname
        self._session = session or NvmlSession()
        self._resolver = resolver or ProcessResolver()
        self._pcie_throughput = pcie_throughput
        self._read = read  # one GPU by index; the unit tests read GPUs without NVML
        self._xids = XidWatcher(self._session) if xid_events else None
        self._pod_resources = pod_resources if include_processes else None
        # The kubelet is asked only when a process needs a pod, unless the GPUs' own series
        # name their pod (dcgm-exporter's labels), which a GPU held by an idle pod has too.
        self._pods_of_idle_gpus = pods_of_idle_gpus
        self._gpm = gpm
        if gpm is not None:
            self._session.on_shutdown(gpm.release)  # free its buffers while NVML still answers
        self._utilization_seen: dict[int, int] = {}  # GPU index -> newest stamp NVML gave
        self._pool = ThreadPoolExecutor(_MAX_READER_THREADS, thread_name_prefix="nvml-read")
        self._pending: dict[int, _Read] = {}
        self._last: dict[int, GpuReading] = {}
        # Each GPU's health fields and when they were read: read again every HEALTH_SECONDS.
        self._health: dict[int, tuple[float, Mapping[str, Any]]] = {}
        # Each GPU's NOT_SUPPORTED getters, the session they were seen in and since when.
        self._unsupported: dict[int, tuple[int, float, Unsupported]] = {}
        self._hung: set[int] = set()
        self._identity: dict[int, GpuSample] = {}  # each GPU's last sample while up
        # Each (GPU, pid)'s last sample and what it was made of, reused while that is the same.
        self._process_samples: dict[tuple[int, int], tuple[tuple[Any, ...], ProcessSample]] = {}
        self._latest = empty_snapshot(read_host(hostname=hostname))
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading side -------------------------------------------------------------------------

    def latest(self) -> Snapshot:
        """The most recent snapshot (an atomic reference read; never blocks)."""
        return self._latest

    @property
    def ready(self) -> bool:
        """True once the first sampling pass has been published."""
        return self._ready.is_set()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()
        if self._xids is not None:
            self._xids.start()

    def stop(self) -> None:
        self._stop.set()
        if self._xids is not None:
            self._xids.stop()  # before the session closes under its wait
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 1)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._session.close()
        if self._pod_resources is not None:
            self._pod_resources.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sample_once()
            except Exception:  # the loop must survive anything a pass throws
                log.exception("sampling pass failed")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    # -- one pass -----------------------------------------------------------------------------

    def sample_once(self) -> Snapshot:
        """Run one sampling pass, publish and return its snapshot."""
        host, host_status = self._timed_host()
        readings, nvml_status = self._timed_gpus()
        gpus, process_status = self._with_processes(readings)
        collectors: tuple[CollectorStatus, ...] = (nvml_status, process_status, host_status)
        if self._gpm is not None:
            collectors += (self._gpm.status([gpu.index for gpu in gpus]),)
        snapshot = Snapshot(
            timestamp=time.time(),
            host=host,
            driver=self._session.driver,
            gpus=self._with_xids(gpus),
            collectors=collectors,
            sequence=self._latest.sequence + 1,
        )
        self._latest = snapshot
        self._ready.set()
        return snapshot

    def _timed_host(self) -> tuple[HostInfo, CollectorStatus]:
        started = time.perf_counter()
        try:
            host, success = read_host(hostname=self._hostname), True
        except Exception:  # keep the last known facts rather than none
            log.exception("reading host facts failed")
            host, success = self._latest.host, False
        return host, CollectorStatus("host", success, time.perf_counter() - started)

    def _timed_gpus(self) -> tuple[tuple[GpuReading, ...], CollectorStatus]:
        started = time.perf_counter()
        readings, success = self._read_gpus()
        return readings, CollectorStatus("nvml", success, time.perf_counter() - started)

    def _read_gpus(self) -> tuple[tuple[GpuReading, ...], bool]:
        if not self._session.ensure():
            return (), False
        try:
            count = self._session.device_count()
        except Exception as error:
            log.warning("cannot list GPUs: %s", error)
            return (), False
        reads = {index: self._submit(index) for index in range(count)}
        for gone in {*self._pending, *self._last, *self._hung, *self._utilization_seen} - set(
            range(count)
        ):
            self._forget(gone)
        # Hung reads are not waited for again. The others get half an interval at most, so a slow
        # GPU delays a snapshot by that much at worst and its read is taken up by the next pass;
        # the first pass, before which nothing is served, gives them the whole timeout.
        budget = self._gpu_timeout if not self.ready else min(self.interval / 2, self._gpu_timeout)
        wait([read.future for i, read in reads.items() if i not in self._hung], timeout=budget)
        readings: list[GpuReading] = []
        success = True
        for index, read in reads.items():
            reading, ok = self._result(index, read)
            readings.append(self._remember_identity(reading))
            success = success and ok
        return tuple(readings), success

    def _submit(self, index: int) -> _Read:
        pending = self._pending.get(index)
        # An earlier pass's read, not yet consumed, is taken up now (never two calls on one GPU),
        # unless it finished in an NVML session that has been reset since: its answer is void.
        if pending is not None:
            if not pending.future.done() or pending.generation == self._session.generation:
                return pending
            self._end_hang(index, pending)
        since = self._utilization_seen.get(index, 0) if self._include_processes else None
        now = time.monotonic()
        known = self._health.get(index)
        health = known[1] if known is not None and now - known[0] < HEALTH_SECONDS else None
        read = _Read(
            self._pool.submit(
                self._read_one,
                index,
                pcie_throughput=self._pcie_throughput,
                utilization_since=since,
                health=health,
                unsupported=self._unsupported_of(index, now),
            ),
            now,
            self._session.generation,
            fresh_health=health is None,
        )
        self._pending[index] = read
        return read

    def _read_one(self, index: int, **options: Any) -> GpuReading:
        """One GPU's fields, then its GPM figures in the same thread (so a GPM call that hangs
        counts as that GPU's hang, never another's)."""
        reading = self._read(index, **options)
        if self._gpm is None or not reading.sample.up:
            return reading
        sample = self._gpm.read(reading.sample, generation=self._session.generation)
        return dataclasses.replace(reading, sample=sample)

    def _unsupported_of(self, index: int, now: float) -> Unsupported:
        """The GPU's NOT_SUPPORTED getters, begun afresh in a new session and when they are old."""
        known = self._unsupported.get(index)
        generation = self._session.generation
        if known is not None and known[0] == generation and now - known[1] < REPROBE_SECONDS:
            return known[2]
        unsupported = Unsupported()
        self._unsupported[index] = (generation, now, unsupported)
        return unsupported

    def _end_hang(self, index: int, read: _Read) -> None:
        if index in self._hung:
            self._hung.discard(index)
            age = time.monotonic() - read.started
            log.warning("GPU %d: NVML hang ended: the call returned after about %.1f s", index, age)

    def _forget(self, index: int) -> None:
        """Drop a GPU that is no longer listed (its pending read, if any, is left to finish)."""
        self._pending.pop(index, None)
        self._last.pop(index, None)
        self._hung.discard(index)
        self._utilization_seen.pop(index, None)
        self._health.pop(index, None)
        if self._gpm is not None:
            self._gpm.forget(index)
        self._unsupported.pop(index, None)

    def _result(self, index: int, read: _Read) -> tuple[GpuReading, bool]:
        down = GpuReading(GpuSample(index=index, up=False))
        age = time.monotonic() - read.started
        if not read.future.done():
            if age < self._gpu_timeout and index in self._last:
                return self._last[index], True  # slow, not yet late: the last reading stands
            if age >= self._gpu_timeout and index not in self._hung:
                self._hung.add(index)
                log.warning(
                    "GPU %d: NVML hang started: no answer within %.1f s; reporting the GPU down "
                    "until the call returns",
                    index,
                    self._gpu_timeout,
                )
            return down, False
        del self._pending[index]
        self._end_hang(index, read)
        if read.generation != self._session.generation:
            return down, False  # began before the session was reset; the next pass reads afresh
        try:
            reading = read.future.result()
        except Exception as error:
            self._last.pop(index, None)
            self._health.pop(index, None)
            self._unsupported.pop(index, None)
            if is_session_error(error):
                self._session.reset(f"NVML session lost: {error}")
            else:
                log.warning("GPU %d: read failed: %s", index, error)
            return down, False
        self._last[index] = reading
        self._check_support(index, reading.sample)
        if read.fresh_health:
            self._health[index] = (read.started, reading.health)
        if reading.process_utilization is not None:
            self._utilization_seen[index] = reading.utilization_seen
        return reading, True

    def _check_support(self, index: int, sample: GpuSample) -> None:
        """Ask a GPU every getter again once it is back up or has changed MIG mode."""
        known = self._unsupported.get(index)
        if known is None:
            return
        unsupported = known[2]
        if not sample.up:
            del self._unsupported[index]  # it may come back reset, or as another board
        elif not unsupported.mig_mode_known:
            unsupported.mig_mode_known, unsupported.mig_mode = True, sample.mig_mode
        elif sample.mig_mode != unsupported.mig_mode:
            del self._unsupported[index]

    def _remember_identity(self, reading: GpuReading) -> GpuReading:
        """Keep a down GPU's uuid and name so its series stay the same series."""
        sample = reading.sample
        if sample.up:
            self._identity[sample.index] = sample
            return reading
        known = self._identity.get(sample.index)
        if known is None:
            return reading
        down = dataclasses.replace(
            sample,
            uuid=known.uuid,
            name=known.name,
            serial=known.serial,
            pci_bus_id=known.pci_bus_id,
        )
        return dataclasses.replace(reading, sample=down)

    def _with_processes(
        self, readings: tuple[GpuReading, ...]
    ) -> tuple[tuple[GpuSample, ...], CollectorStatus]:
        started = time.perf_counter()
        if not self._include_processes:
            bare = tuple(r.sample for r in readings)
            return bare, CollectorStatus("processes", True, time.perf_counter() - started)
        success = True
        try:
            owners = self._resolver.resolve({p.pid for r in readings for p in r.processes})
        except Exception:
            log.exception("process lookup failed")
            owners, success = {}, False
        asked = self._pods_of_idle_gpus or any(r.processes for r in readings)
        holders = self._gpu_holders() if asked else {}
        gpus: list[GpuSample] = []
        samples: dict[tuple[int, int], tuple[tuple[Any, ...], ProcessSample]] = {}
        for reading in readings:
            mig_uuids = {(m.gpu_instance, m.compute_instance): m.uuid for m in reading.sample.migs}
            gpu_pods = holders.get(reading.sample.uuid or "", ())
            migs = tuple(
                dataclasses.replace(mig, pods=holders[mig.uuid]) if mig.uuid in holders else mig
                for mig in reading.sample.migs
            )
            utilization = reading.process_utilization
            processes = []
            for raw in reading.processes:
                mig_uuid = mig_uuids.get((raw.gpu_instance, raw.compute_instance), "")
                # The kubelet lists a MIG device by its own uuid, not its GPU's.
                pods = holders.get(mig_uuid, gpu_pods) if mig_uuid else gpu_pods
                used = None if utilization is None else utilization.get(raw.pid, IDLE_PROCESS)
                inputs = (raw, owners.get(raw.pid), pods, used, mig_uuid)
                key = (reading.sample.index, raw.pid)
                known = self._process_samples.get(key)
                # Owners, pods and shares are the same objects while they hold: a cheap compare.
                sample = known[1] if known and known[0] == inputs else _process_sample(*inputs)
                samples[key] = (inputs, sample)
                processes.append(sample)
            gpus.append(
                _replaced(reading.sample, processes=tuple(processes), pods=gpu_pods, migs=migs)
            )
        self._process_samples = samples  # only the processes listed now
        return tuple(gpus), CollectorStatus("processes", success, time.perf_counter() - started)

    def _gpu_holders(self) -> dict[str, tuple[PodContainer, ...]]:
        if self._pod_resources is None:
            return {}
        return self._pod_resources.gpu_devices()  # cached for seconds; never raises

    def _with_xids(self, gpus: tuple[GpuSample, ...]) -> tuple[GpuSample, ...]:
        """Copy the event thread's XID counts in: no NVML call, a lock held for a dict copy."""
        if self._xids is None:
            return gpus
        counts = self._xids.counts()
        return tuple(
            _replaced(gpu, xid=counts[gpu.index]) if gpu.index in counts else gpu for gpu in gpus
        )


def _replaced(sample: GpuSample, **changes: Any) -> GpuSample:
    """``dataclasses.replace(sample, **changes)`` for a snapshot not yet published.

    replace runs ``__init__`` over all 50-odd fields of a frozen dataclass (27 us); copying the
    instance's dict costs a tenth of that, twice per GPU and pass. GpuSample has no
    ``__post_init__`` to skip.
    """
    unknown = changes.keys() - sample.__dict__.keys()
    if unknown:
        raise TypeError(f"GpuSample has no field {sorted(unknown)}")
    copy = object.__new__(GpuSample)
    copy.__dict__.update(sample.__dict__, **changes)
    return copy


def _process_sample(
    raw: RawProcess,
    owner: ProcessOwner | None,
    pods: tuple[PodContainer, ...],
    used: ProcessUtilization | None,
    mig_uuid: str,
) -> ProcessSample:
    attribution = owner.attribution if owner else None
    # The kubelet's name only when it is unambiguous: a shared (time-sliced) GPU has several
    # holders, and which of them this pid is, only the cgroup's pod uid can tell.
    if len(pods) == 1:
        pod, namespace = pods[0].pod, pods[0].namespace
    else:
        pod, namespace = (attribution.pod_uid if attribution else ""), ""
    return ProcessSample(
        pid=raw.pid,
        kind=raw.kind,
        gpu_memory_bytes=raw.gpu_memory_bytes,
        user=owner.user if owner else "",
        command=owner.command if owner else "",
        gpu_instance=raw.gpu_instance,
        compute_instance=raw.compute_instance,
        mig_uuid=mig_uuid,
        slurm_job=attribution.slurm_job if attribution else "",
        container=attribution.container if attribution else "",
        pod=pod,
        namespace=namespace,
        sm_utilization_ratio=None if used is None else used.sm,
        memory_utilization_ratio=None if used is None else used.memory,
        encoder_utilization_ratio=None if used is None else used.encoder,
        decoder_utilization_ratio=None if used is None else used.decoder,
    )
