"""GPU health through the real exporter on the fake NVML: memory repair, ECC, PCIe, NVLink, MIG
and XID events. Each metric is checked against the scenario's values; an unsupported field is
absent while the others stay.
"""

from __future__ import annotations

import dataclasses
import signal
import time

from simulator.fakenvml import scenario as fake
from simulator.metrics import label_sets, value, values

NVML_ERROR_DRIVER_NOT_LOADED = 9


def healthy_gpu(index: int = 0, **overrides: object) -> fake.FakeGpu:
    gpu = fake.make_gpu(
        index,
        ecc_aggregate_corrected=12,
        ecc_aggregate_uncorrected=1,
        pcie_replay=3,
        pcie_link=fake.FakePcieLink(max_gen=5, max_width=16, gen=4, width=8),
        pcie_throughput=(1200, 3400),
        nvlinks=[fake.FakeNvLink(), fake.FakeNvLink(False, crc_flit=7, crc_data=2, replay=1)],
        remapped_rows=fake.FakeRemappedRows(corrected=2, uncorrected=1, pending=True),
    )
    return dataclasses.replace(gpu, **overrides)


def test_health_metrics_match_the_scenario(exporter_factory):
    exporter = exporter_factory(fake.FakeScenario(gpus=[healthy_gpu()]))
    text = exporter.metrics()
    assert value(text, "gpu_remapped_rows", gpu="0", cause="correctable") == 2
    assert value(text, "gpu_remapped_rows", gpu="0", cause="uncorrectable") == 1
    assert value(text, "gpu_remapped_rows_pending", gpu="0") == 1
    assert value(text, "gpu_remapped_rows_failure", gpu="0") == 0
    # A row-remapping GPU has no page retirement.
    assert values(text, "gpu_retired_pages") == []
    assert values(text, "gpu_retired_pages_pending") == []
    assert value(text, "gpu_ecc_aggregate_errors_total", type="corrected") == 12
    assert value(text, "gpu_ecc_aggregate_errors_total", type="uncorrected") == 1
    assert value(text, "gpu_ecc_errors_total", type="corrected") == 0  # volatile, unchanged
    assert value(text, "gpu_pcie_replay_errors_total", gpu="0") == 3
    assert value(text, "gpu_pcie_link_generation", gpu="0") == 4
    assert value(text, "gpu_pcie_link_generation_max", gpu="0") == 5
    assert value(text, "gpu_pcie_link_width", gpu="0") == 8
    assert value(text, "gpu_pcie_link_width_max", gpu="0") == 16
    # Throughput costs NVML 20 ms per call: off unless asked for.
    assert values(text, "gpu_pcie_throughput_bytes_per_second") == []
    assert value(text, "gpu_nvlink_up", gpu="0", link="0") == 1
    assert value(text, "gpu_nvlink_up", gpu="0", link="1") == 0
    assert value(text, "gpu_nvlink_errors_total", link="1", type="crc_flit") == 7
    assert value(text, "gpu_nvlink_errors_total", link="1", type="crc_data") == 2
    assert value(text, "gpu_nvlink_errors_total", link="1", type="replay") == 1
    assert value(text, "gpu_nvlink_errors_total", link="1", type="recovery") == 0
    assert value(text, "gpu_nvlink_errors_total", link="0", type="crc_flit") == 0
    assert len(values(text, "gpu_nvlink_errors_total")) == 8
    # Not a MIG-capable GPU: no MIG series at all.
    assert values(text, "gpu_mig_mode") == [] and values(text, "gpu_mig_info") == []


def test_pcie_throughput_with_its_flag(exporter_factory):
    exporter = exporter_factory(
        fake.FakeScenario(gpus=[healthy_gpu()]), "--collector.pcie-throughput"
    )
    text = exporter.metrics()
    assert value(text, "gpu_pcie_throughput_bytes_per_second", direction="tx") == 1200 * 1000
    assert value(text, "gpu_pcie_throughput_bytes_per_second", direction="rx") == 3400 * 1000


def test_retired_pages_on_a_page_retirement_gpu(exporter_factory):
    old = fake.make_gpu(1, retired_pages={"sbe": 3, "dbe": 1}, retired_pages_pending=True)
    exporter = exporter_factory(fake.FakeScenario(gpus=[fake.make_gpu(0), old]))
    text = exporter.metrics()
    assert value(text, "gpu_retired_pages", gpu="1", cause="single_bit_ecc") == 3
    assert value(text, "gpu_retired_pages", gpu="1", cause="double_bit_ecc") == 1
    assert value(text, "gpu_retired_pages_pending", gpu="1") == 1
    assert values(text, "gpu_remapped_rows", gpu="1") == []
    assert values(text, "gpu_retired_pages", gpu="0") == []


def test_unsupported_health_fields_are_absent_alone(exporter_factory):
    partial = healthy_gpu(
        1,
        pcie_replay=None,
        remapped_rows=None,
        nvlinks=[fake.FakeNvLink(crc_flit=5)],
        fail={"nvmlDeviceGetNvLinkState": 3},
    )
    exporter = exporter_factory(fake.FakeScenario(gpus=[healthy_gpu(0), partial]))
    text = exporter.metrics()
    assert values(text, "gpu_pcie_replay_errors_total", gpu="1") == []
    assert values(text, "gpu_remapped_rows", gpu="1") == []
    assert values(text, "gpu_remapped_rows_pending", gpu="1") == []
    assert values(text, "gpu_nvlink_up", gpu="1") == []  # state unsupported ...
    assert value(text, "gpu_nvlink_errors_total", gpu="1", type="crc_flit") == 5  # ... counters not
    assert value(text, "gpu_pcie_link_width", gpu="1") == 8
    assert value(text, "gpu_pcie_replay_errors_total", gpu="0") == 3
    assert value(text, "gpu_remapped_rows_pending", gpu="0") == 1
    assert len(values(text, "gpu_nvlink_up", gpu="0")) == 2


def test_mig_gpu_instances_memory_and_processes(exporter_factory, worker_pids):
    pid, plain_pid = worker_pids(2)
    mig = fake.make_mig_gpu(0, profiles=("3g.40gb", "1g.10gb"))
    mig.migs[0].memory_used = 5 * fake.GIB
    mig.processes = [fake.FakeProcess(pid, fake.GIB, gpu_instance=2, compute_instance=0)]
    plain = fake.make_gpu(1, processes=[fake.FakeProcess(plain_pid, 2 * fake.GIB)])
    exporter = exporter_factory(fake.FakeScenario(gpus=[mig, plain]))
    text = exporter.metrics()
    uuid = mig.uuid
    assert value(text, "gpu_mig_mode", gpu="0") == 1
    assert value(text, "gpu_mig_mode_pending", gpu="0") == 1
    first, second = fake.mig_uuid(0, 0), fake.mig_uuid(0, 1)
    infos = sorted(label_sets(text, "gpu_mig_info"), key=lambda labels: labels["gi"])
    assert infos == [
        {"gpu": "0", "uuid": uuid, "mig_uuid": first, "gi": "1", "ci": "0", "profile": "3g.40gb"},
        {"gpu": "0", "uuid": uuid, "mig_uuid": second, "gi": "2", "ci": "0", "profile": "1g.10gb"},
    ]
    assert value(text, "gpu_mig_memory_used_bytes", mig_uuid=first) == 5 * fake.GIB
    assert value(text, "gpu_mig_memory_total_bytes", mig_uuid=first) == 40 * fake.GIB
    assert value(text, "gpu_mig_memory_total_bytes", mig_uuid=second, gi="2", ci="0") == (
        10 * fake.GIB
    )
    # NVML has no device-level utilization in MIG mode: absent, never a made-up 0.
    assert values(text, "gpu_utilization_ratio", gpu="0") == []
    assert values(text, "gpu_memory_utilization_ratio", gpu="0") == []
    assert values(text, "gpu_utilization_ratio", gpu="1") == [plain.utilization_gpu / 100]
    assert value(text, "gpu_process_memory_used_bytes", pid=str(pid), mig_uuid=second) == fake.GIB
    assert value(text, "gpu_process_memory_used_bytes", pid=str(plain_pid), mig_uuid="") == (
        2 * fake.GIB
    )
    info = [labels for labels in label_sets(text, "gpu_process_info") if labels["pid"] == str(pid)]
    assert info and info[0]["mig_uuid"] == second
    assert values(text, "gpu_mig_mode", gpu="1") == []  # no MIG support: no series
    # The legacy JSON keeps the MIG GPU's process under the GPU, with its memory.
    gpus = exporter.status()["gpus"]
    assert [(u["pid"], u["mem(MiB)"]) for u in gpus[0]["users"]] == [(pid, 1024)]
    assert gpus[0]["utilize"] is None


def xid_total(text: str, **labels: str) -> float:
    return sum(values(text, "gpu_xid_errors_total", **labels))


def test_injected_xid_is_counted_once(exporter_factory):
    gpus = [fake.make_gpu(0), fake.make_gpu(1)]
    exporter = exporter_factory(fake.FakeScenario(gpus=gpus))
    time.sleep(1.5)
    assert values(exporter.metrics(), "gpu_xid_errors_total") == []
    before = time.time()
    gpus[1] = dataclasses.replace(gpus[1], xids=[fake.FakeXid(79)])
    exporter.set_scenario(fake.FakeScenario(gpus=gpus))
    text = exporter.wait_for_metrics(lambda t: xid_total(t) >= 1, timeout=10)
    assert value(text, "gpu_xid_errors_total", gpu="1", uuid=gpus[1].uuid, xid="79") == 1
    assert value(text, "gpu_last_xid", gpu="1") == 79
    assert before - 1 <= value(text, "gpu_last_xid_timestamp_seconds", gpu="1") <= time.time()
    assert values(text, "gpu_last_xid", gpu="0") == []
    time.sleep(2)  # more waits and samples: still counted once
    text = exporter.metrics()
    assert value(text, "gpu_xid_errors_total", gpu="1", xid="79") == 1
    gpus[1] = dataclasses.replace(gpus[1], xids=[fake.FakeXid(79), fake.FakeXid(79, id=1)])
    exporter.set_scenario(fake.FakeScenario(gpus=gpus))
    exporter.wait_for_metrics(
        lambda t: values(t, "gpu_xid_errors_total", gpu="1", xid="79") == [2], timeout=10
    )


def test_sigterm_stops_promptly_while_waiting_for_events(exporter_factory):
    exporter = exporter_factory(fake.FakeScenario(gpus=[fake.make_gpu(0)]))
    time.sleep(1.5)  # the event thread is registered and waiting
    started = time.monotonic()
    exporter.process.process.send_signal(signal.SIGTERM)
    exporter.process.process.wait(timeout=10)
    assert time.monotonic() - started < 3, exporter.log()


def test_xid_events_survive_nvml_reinit(exporter_factory):
    gpus = [fake.make_gpu(0, xids=[fake.FakeXid(48)])]
    broken = fake.FakeScenario(gpus=gpus, fail={"nvmlInitWithFlags": NVML_ERROR_DRIVER_NOT_LOADED})
    exporter = exporter_factory(broken)
    assert values(exporter.metrics(), "gpu_xid_errors_total") == []
    exporter.set_scenario(fake.FakeScenario(gpus=gpus))
    exporter.wait_for_metrics(lambda t: xid_total(t, xid="48") == 1, timeout=15)
    # The driver goes away mid-run and comes back: the session is re-initialised and the
    # event set rebuilt on it.
    exporter.set_scenario(
        fake.FakeScenario(gpus=gpus, fail={"nvmlDeviceGetCount_v2": NVML_ERROR_DRIVER_NOT_LOADED})
    )
    exporter.wait_for_metrics(lambda t: values(t, "gpu_up") == [], timeout=10)
    gpus = [dataclasses.replace(gpus[0], xids=[fake.FakeXid(48), fake.FakeXid(31, id=1)])]
    exporter.set_scenario(fake.FakeScenario(gpus=gpus))
    text = exporter.wait_for_metrics(lambda t: xid_total(t, xid="31") == 1, timeout=20)
    assert value(text, "gpu_xid_errors_total", xid="48") == 1
    assert exporter.process.alive
