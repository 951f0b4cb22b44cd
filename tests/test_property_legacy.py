"""Property tests: the legacy ``POST /get-status`` over real HTTP, and the pure renderers.

Over HTTP, whatever a client sends (arbitrary bytes, any JSON value, any unicode password, bodies
far over the limit, chunked or not) gets exactly the answer the legacy contract predicts: 200 for
the right password, 403 for a wrong one, 400 for anything that is not ``{"passwd": "<string>"}``,
413 over 4096 bytes, 429 once an address has guessed wrong too often; always a JSON error body,
never a 500. Each example connects from its own loopback address so the throttle does not mask
the parser. The renderers are checked over arbitrary snapshots full of hostile text: they never
raise, the Prometheus text parses back with every label value intact, and the JSON round-trips.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)

from exporter.collector import render, snapshot_families
from exporter.legacy import legacy_status, legacy_status_json
from exporter.snapshot import (
    CollectorStatus,
    DriverInfo,
    GpuSample,
    HostInfo,
    ProcessSample,
    Snapshot,
)
from simulator.exporters import ClientAddresses, ExporterProcess, Workers, start_exporter
from simulator.fakenvml import scenario as fake
from simulator.metrics import parse_samples

# Not ASCII, and equal to another spelling only after Unicode normalisation (NFC "é").
PASSWORD = "caf\u00e9-\u5bc6\u7801-\U0001f511"
MAX_BODY = 4096
BURST = 5  # wrong passwords an address may send before it is slowed down

HTTP_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
clients = ClientAddresses(base=500_000)


# ---------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def exporter(fake_nvml: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    workdir = tmp_path_factory.mktemp("property-legacy")
    with Workers() as workers:
        scenario = fake.busy(2, workers.start(3))
        process = start_exporter(fake_nvml, workdir, scenario, password=PASSWORD)
        try:
            yield process
            assert process.process.alive(), process.log()
            log = process.log()
            assert "Traceback" not in log, log
            assert " ERROR " not in log, log
        finally:
            process.stop()


def expected_status(body: bytes) -> int:
    """What the legacy contract answers to ``body`` from an address not yet slowed down."""
    if len(body) > MAX_BODY:
        return 413
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return 400
    if not isinstance(document, dict) or not isinstance(document.get("passwd"), str):
        return 400
    return 200 if document["passwd"] == PASSWORD else 403


def post(
    exporter: ExporterProcess,
    body: bytes | Iterator[bytes],
    *,
    content_type: str | None = "application/json",
    session: requests.Session | None = None,
) -> requests.Response:
    headers = {} if content_type is None else {"Content-Type": content_type}
    with session or clients.session() as client:
        return client.post(f"{exporter.url}/get-status", data=body, headers=headers, timeout=10)


def check_answer(response: requests.Response, expected: int) -> None:
    assert response.status_code == expected, (expected, response.status_code, response.text[:300])
    assert response.headers["Content-Type"] == "application/json"
    document = response.json()
    if expected == 200:
        assert set(document) == {"hostname", "last_update", "ips", "gpus"}
        assert len(document["gpus"]) == 2
    else:
        assert list(document) == ["error"]
        assert isinstance(document["error"], str) and document["error"]
        assert "Traceback" not in document["error"]


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=()), max_size=40)  # lone surrogates too
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@HTTP_SETTINGS
@given(
    body=st.binary(max_size=MAX_BODY + 200),
    content_type=st.sampled_from([None, "application/json", "text/plain", "x/\u00ff"]),
)
@example(body=b"", content_type=None)
@example(body=b"\xff\xfe{\x00", content_type="application/json")
@example(body=b'{"passwd": "\xff"}', content_type="application/json")
@example(body=b"[" * 3000, content_type="application/json")
def test_arbitrary_bytes(exporter, body: bytes, content_type: str | None) -> None:
    check_answer(post(exporter, body, content_type=content_type), expected_status(body))


@HTTP_SETTINGS
@given(
    document=JSON_VALUES
    | st.builds(lambda value, extra: {**extra, "passwd": value}, JSON_VALUES, st.dictionaries(
        st.text(max_size=8), JSON_SCALARS, max_size=3))
)  # fmt: skip
@example(document={"passwd": "\ud800"})
@example(document={"passwd": "\udcff"})
@example(document={"passwd": None})
@example(document={"passwd": PASSWORD, "extra": [1, {"x": None}]})
@example(document={"Passwd": PASSWORD})
def test_any_json_value(exporter, document: Any) -> None:
    body = json.dumps(document).encode()
    check_answer(post(exporter, body), expected_status(body))


@HTTP_SETTINGS
@given(password=st.text(st.characters(exclude_categories=()), max_size=64))
@example(password=PASSWORD)
@example(password="\ud83d")  # half of the key emoji's surrogate pair
@example(password="cafe\u0301-\u5bc6\u7801-\U0001f511")  # the same text, decomposed (NFD)
@example(password=PASSWORD + "\x00")
@example(password=PASSWORD[:-1])
@example(password="")
def test_unicode_passwords_match_exactly(exporter, password: str) -> None:
    """Escaped (ASCII) and raw UTF-8 spellings of the same password get the same answer."""
    expected = 200 if password == PASSWORD else 403
    escaped = json.dumps({"passwd": password}).encode()
    check_answer(post(exporter, escaped), expected)
    try:
        raw = json.dumps({"passwd": password}, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form; only the escape exists
        return
    check_answer(post(exporter, raw), expected)


def _chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@settings(HTTP_SETTINGS, max_examples=30)
@given(
    length=st.integers(min_value=MAX_BODY - 20, max_value=2_000_000),
    character=st.sampled_from(["a", "\u00e9", '"', "\\", "\U0001f511"]),
    chunked=st.booleans(),
)
@example(length=MAX_BODY - len('{"passwd": ""}'), character="a", chunked=False)
@example(length=MAX_BODY - len('{"passwd": ""}') + 1, character="a", chunked=True)
@example(length=20_000_000, character="a", chunked=False)
def test_huge_bodies_are_refused_without_reading_them(
    exporter, length: int, character: str, chunked: bool
) -> None:
    escaped_length = len(json.dumps(character)) - 2  # without the quotes
    body = json.dumps({"passwd": character * (length // escaped_length)}).encode()
    payload = _chunks(body) if chunked else body
    check_answer(post(exporter, payload), expected_status(body))


@settings(HTTP_SETTINGS, max_examples=15)
@given(
    wrong=st.lists(st.text(max_size=10).filter(lambda p: p != PASSWORD), min_size=BURST,
                   max_size=BURST + 3),
    then=st.sampled_from([b"", b"{", json.dumps({"passwd": PASSWORD}).encode(), b"x" * 9000]),
)  # fmt: skip
def test_guessing_address_is_slowed_down_whatever_it_sends(
    exporter, wrong: list[str], then: bytes
) -> None:
    """After the burst of wrong passwords the address gets 429 with Retry-After, body unread.

    A body over the cap is refused by the server before the app sees it, limited or not (413).
    """
    with clients.session() as session:
        for password in wrong:
            body = json.dumps({"passwd": password}).encode()
            response = post(exporter, body, session=session)
            assert response.status_code in (403, 429), response.text
        response = post(exporter, then, session=session)
    if len(then) > MAX_BODY:
        check_answer(response, 413)
        return
    check_answer(response, 429)
    assert int(response.headers["Retry-After"]) >= 1
    # Another address is not affected.
    check_answer(post(exporter, then), expected_status(then))


# ---------------------------------------------------------------- pure renderers

HOSTILE_PIECES = st.sampled_from(
    ['"', "\\", "\n", "\r", "\t", "\x00", "\x1b[31m", "<script>alert(1)</script>", "{}",
     '",evil="1', "\\n", "\u2028", "\ufffd", "\U0001f511", "#", "=", ",", " "]
)  # fmt: skip
HOSTILE_TEXT = st.lists(
    HOSTILE_PIECES | st.text(st.characters(exclude_categories=("Cs",)), max_size=8), max_size=6
).map("".join)
RATIO = st.floats(min_value=0.0, max_value=1.0)
BIG = st.integers(min_value=0, max_value=2**63)
MEASURE = st.floats(min_value=0.0, max_value=1e12, allow_nan=False)


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | strategy


PROCESSES = st.builds(
    ProcessSample,
    pid=st.integers(min_value=0, max_value=2**31),
    kind=st.sampled_from(["compute", "graphics"]),
    gpu_memory_bytes=maybe(BIG),
    user=HOSTILE_TEXT,
    command=HOSTILE_TEXT,
    mig_uuid=HOSTILE_TEXT,
    slurm_job=HOSTILE_TEXT,
    container=HOSTILE_TEXT,
    pod=HOSTILE_TEXT,
    namespace=HOSTILE_TEXT,
    sm_utilization_ratio=maybe(RATIO),
    memory_utilization_ratio=maybe(RATIO),
    encoder_utilization_ratio=maybe(RATIO),
    decoder_utilization_ratio=maybe(RATIO),
)


@st.composite
def gpus(draw: st.DrawFn, index: int) -> GpuSample:
    return GpuSample(
        index=index,
        up=draw(st.booleans()),
        uuid=draw(maybe(HOSTILE_TEXT)),
        name=draw(maybe(HOSTILE_TEXT)),
        serial=draw(maybe(HOSTILE_TEXT)),
        pci_bus_id=draw(maybe(HOSTILE_TEXT)),
        memory_total_bytes=draw(maybe(BIG)),
        memory_used_bytes=draw(maybe(BIG)),
        memory_free_bytes=draw(maybe(BIG)),
        utilization_ratio=draw(maybe(RATIO)),
        memory_utilization_ratio=draw(maybe(RATIO)),
        temperature_celsius=draw(maybe(st.floats(min_value=-50, max_value=200))),
        power_watts=draw(maybe(MEASURE)),
        power_limit_watts=draw(maybe(MEASURE)),
        energy_joules=draw(maybe(MEASURE)),
        fan_speed_ratio=draw(maybe(RATIO)),
        clock_sm_hertz=draw(maybe(MEASURE)),
        clock_memory_hertz=draw(maybe(MEASURE)),
        performance_state=draw(maybe(st.integers(min_value=0, max_value=32))),
        ecc_corrected_errors=draw(maybe(BIG)),
        ecc_uncorrected_errors=draw(maybe(BIG)),
        throttle_reasons=draw(maybe(st.integers(min_value=0, max_value=2**64 - 1))),
        # One entry per pid and GPU: a pid listed twice on one GPU (compute and graphics at
        # once) would give two series with the same labels, which no renderer can round-trip.
        processes=tuple(draw(st.lists(PROCESSES, max_size=4, unique_by=lambda p: p.pid))),
    )


COLLECTORS = st.lists(
    st.builds(
        CollectorStatus,
        st.sampled_from(["nvml", "processes", "host"]),
        st.booleans(),
        st.floats(min_value=0, max_value=1e6),
    ),
    max_size=3,
    unique_by=lambda status: status.name,
).map(tuple)


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    n_gpus = draw(st.integers(min_value=0, max_value=4))
    return Snapshot(
        # The sampler stamps snapshots with time.time(); any time a clock can show.
        timestamp=draw(st.floats(min_value=0.0, max_value=4102444800.0)),
        host=HostInfo(
            hostname=draw(HOSTILE_TEXT),
            ips=tuple(draw(st.lists(st.tuples(HOSTILE_TEXT, HOSTILE_TEXT), max_size=3))),
        ),
        driver=DriverInfo(
            driver_version=draw(HOSTILE_TEXT),
            cuda_version=draw(HOSTILE_TEXT),
            nvml_version=draw(HOSTILE_TEXT),
        ),
        gpus=tuple(draw(gpus(i)) for i in range(n_gpus)),
        collectors=draw(COLLECTORS),
        sequence=draw(st.integers(min_value=0, max_value=2**40)),
    )


RENDER_SETTINGS = settings(max_examples=150, deadline=None)


@RENDER_SETTINGS
@given(snapshot=snapshots())
def test_legacy_json_round_trips(snapshot: Snapshot) -> None:
    body = legacy_status_json(snapshot)
    body.decode("ascii")  # hostile text travels as \u escapes only
    document = json.loads(body)
    assert document == legacy_status(snapshot)
    assert list(document) == ["hostname", "last_update", "ips", "gpus"]
    assert document["hostname"] == snapshot.host.hostname
    assert document["ips"] == [list(pair) for pair in snapshot.host.ips]
    # Local time, as the old script wrote it; compared as local times so DST cannot interfere.
    updated = datetime.fromisoformat(document["last_update"])
    assert abs(updated - datetime.fromtimestamp(snapshot.timestamp)).total_seconds() < 1e-5
    for gpu, rendered in zip(snapshot.gpus, document["gpus"]):
        assert list(rendered) == ["index", "name", "use_mem", "tot_mem", "utilize", "temp", "users"]
        assert rendered["name"] == (gpu.name or "")
        if gpu.memory_used_bytes is not None:
            assert rendered["use_mem"] == gpu.memory_used_bytes // 2**20
        if gpu.utilization_ratio is not None:
            assert 0 <= rendered["utilize"] <= 100
        assert [(u["pid"], u["username"], u["command"]) for u in rendered["users"]] == [
            (p.pid, p.user, p.command) for p in gpu.processes
        ]
        for user, process in zip(rendered["users"], gpu.processes):
            assert list(user) == ["pid", "username", "mem(MiB)", "command"]
            memory = process.gpu_memory_bytes
            assert user["mem(MiB)"] == (None if memory is None else memory // 2**20)


def _labels(samples: list[tuple[str, dict[str, str], float]], name: str) -> list[dict[str, str]]:
    return [labels for sample, labels, _ in samples if sample == name]


def _expected_label_sets(snapshot: Snapshot) -> dict[str, list[dict[str, str]]]:
    gpu_info = [
        {"gpu": str(g.index), "uuid": g.uuid or "", "name": g.name or "",
         "pci_bus_id": g.pci_bus_id or "", "serial": g.serial or ""}
        for g in snapshot.gpus
    ]  # fmt: skip
    process_info = [
        {"gpu": str(g.index), "uuid": g.uuid or "", "pid": str(p.pid), "user": p.user,
         "mig_uuid": p.mig_uuid, "slurm_job": p.slurm_job, "container": p.container,
         "pod": p.pod, "namespace": p.namespace, "command": p.command}
        for g in snapshot.gpus
        for p in g.processes
    ]  # fmt: skip
    driver = snapshot.driver
    return {
        "gpu_info": gpu_info,
        "gpu_process_info": process_info,
        "gpu_node_info": [{"hostname": snapshot.host.hostname}],
        "gpu_exporter_build_info": [
            {"driver_version": driver.driver_version, "cuda_version": driver.cuda_version,
             "nvml_version": driver.nvml_version}
        ],
    }  # fmt: skip


@RENDER_SETTINGS
@given(snapshot=snapshots())
def test_prometheus_text_parses_back_with_labels_intact(snapshot: Snapshot) -> None:
    text = render(snapshot, include_commands=True).decode("utf-8")
    samples = parse_samples(text)
    for name, expected in _expected_label_sets(snapshot).items():
        found = _labels(samples, name)
        if name == "gpu_exporter_build_info":
            found = [{k: v for k, v in labels.items() if k != "version"} for labels in found]
        assert found == expected, name
    # One sample line per sample: no label value broke a line ("\n" is the only line break).
    sample_lines = [line for line in text.split("\n") if line and not line.startswith("#")]
    assert len(sample_lines) == len(samples)
    up = {labels["gpu"]: value for name, labels, value in samples if name == "gpu_up"}
    assert up == {str(g.index): float(g.up) for g in snapshot.gpus}
    for gpu in snapshot.gpus:
        if gpu.memory_used_bytes is not None:
            (used,) = [
                value
                for name, labels, value in samples
                if name == "gpu_memory_used_bytes" and labels["gpu"] == str(gpu.index)
            ]
            assert math.isclose(used, gpu.memory_used_bytes, rel_tol=1e-15)


@RENDER_SETTINGS
@given(snapshot=snapshots())
def test_openmetrics_parses_back_with_labels_intact(snapshot: Snapshot) -> None:
    text = render(snapshot, openmetrics=True, include_commands=True).decode("utf-8")
    families = {family.name: family for family in parse_openmetrics(text)}
    expected = _expected_label_sets(snapshot)
    for family_name, sample_name in (("gpu", "gpu_info"), ("gpu_process", "gpu_process_info")):
        found = [dict(s.labels) for s in families[family_name].samples if s.name == sample_name]
        assert found == expected[sample_name]


@RENDER_SETTINGS
@given(snapshot=snapshots(), include_processes=st.booleans())
def test_families_are_built_fresh_and_never_raise(
    snapshot: Snapshot, include_processes: bool
) -> None:
    first = list(snapshot_families(snapshot, include_processes=include_processes))
    second = list(snapshot_families(snapshot, include_processes=include_processes))
    assert [f.name for f in first] == [f.name for f in second]
    assert all(a is not b for a, b in zip(first, second))
    names = {family.name for family in first}
    assert ("gpu_process" in names) == include_processes
    assert len(names) == len(first), "a family name appears twice"
