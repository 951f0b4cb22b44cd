"""The kubelet pod-resources client against a real gRPC server on a unix socket.

The server's answers are encoded by the real protobuf library, from message classes compiled at
test time out of a proto with the kubelet API's field numbers (plus fields a newer kubelet might
add), so the wire decoder is checked against real encoding, not against itself.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.kubelet import (
    PodResourcesClient,
    WireError,
    decode_list_response,
    devices_by_id,
    gpu_device_id,
    is_gpu_resource,
)
from exporter.snapshot import PodContainer
from tests.support.kubelet import FakeKubelet, PodDevices, list_answer

pytestmark = pytest.mark.unit

# The kubelet's v1 API (k8s.io/kubelet/pkg/apis/podresources/v1/api.proto), the messages of
# List, with its field numbers; fields 14-16 stand for what a later kubelet might add.
PROTO = """
syntax = "proto3";
package v1;
message ListPodResourcesResponse { repeated PodResources pod_resources = 1; }
message PodResources {
  string name = 1;
  string namespace = 2;
  repeated ContainerResources containers = 3;
}
message ContainerResources {
  string name = 1;
  repeated ContainerDevices devices = 2;
  repeated int64 cpu_ids = 3;
  repeated ContainerMemory memory = 4;
  repeated DynamicResource dynamic_resources = 5;
}
message ContainerMemory { string memory_type = 1; uint64 size = 2; TopologyInfo topology = 3; }
message ContainerDevices {
  string resource_name = 1;
  repeated string device_ids = 2;
  TopologyInfo topology = 3;
  double future_weight = 14;
  fixed32 future_flags = 15;
  sint64 future_offset = 16;
}
message TopologyInfo { repeated NUMANode nodes = 1; }
message NUMANode { int64 ID = 1; }
message DynamicResource {
  string claim_name = 2;
  string claim_namespace = 3;
  repeated ClaimResource claim_resources = 4;
}
message ClaimResource {
  repeated CDIDevice cdi_devices = 1;
  string driver_name = 2;
  string pool_name = 3;
  string device_name = 4;
}
message CDIDevice { string name = 1; }
"""

GPU0 = "GPU-8f2c1d90-3e5a-4b17-9c2e-5da9abb51763"
GPU1 = "GPU-1a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d"
GPU2 = "GPU-99999999-8888-4777-8666-555555555555"
MIG0 = "MIG-0b5a1c3e-7d2f-5e8a-9b4c-1d6e3f7a2b9c"
MIG1 = "MIG-4c3b2a19-8f7e-5d6c-ab9a-887766554433"


@pytest.fixture(scope="session")
def messages() -> Any:
    """Message classes compiled from PROTO by protoc, loaded through protobuf's descriptors."""
    pytest.importorskip("google.protobuf", reason="protobuf is not installed (the test extra)")
    protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools is not installed")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    directory = Path(tempfile.mkdtemp(prefix="podres-proto-"))
    try:
        (directory / "api.proto").write_text(PROTO)
        out = directory / "api.desc"
        status = protoc.main(
            [
                "protoc",
                f"-I{directory}",
                f"--descriptor_set_out={out}",
                str(directory / "api.proto"),
            ]
        )
        assert status == 0, "protoc failed on the test proto"
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    finally:
        shutil.rmtree(directory)
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)

    class Messages:
        def __getattr__(self, name: str) -> Any:
            return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"v1.{name}"))

    return Messages()


def answer(messages: Any) -> bytes:
    """A node with whole, MIG and time-sliced GPUs, other devices and every optional field."""
    response = messages.ListPodResourcesResponse()
    train = response.pod_resources.add(name="train-7d9f", namespace="ml")
    worker = train.containers.add(name="worker")
    worker.cpu_ids.extend([0, 1, 2, 3])
    memory = worker.memory.add(memory_type="memory", size=1 << 34)
    memory.topology.nodes.add(ID=0)
    gpus = worker.devices.add(resource_name="nvidia.com/gpu", device_ids=[GPU0, GPU1])
    gpus.topology.nodes.add(ID=1)
    gpus.future_weight, gpus.future_flags, gpus.future_offset = 0.5, 7, -3
    worker.devices.add(resource_name="example.com/nic", device_ids=["0000:3b:00.1"])
    claim = worker.dynamic_resources.add(claim_name="c", claim_namespace="ml")
    claim.claim_resources.add(driver_name="gpu.example.com", device_name="d0").cdi_devices.add(
        name="example.com/gpu=d0"
    )
    train.containers.add(name="sidecar")  # no devices at all

    infer = response.pod_resources.add(name="infer-0", namespace="serving")
    infer.containers.add(name="server").devices.add(
        resource_name="nvidia.com/mig-1g.10gb", device_ids=[MIG0, MIG1]
    )
    for replica, pod in ((0, "notebook-a"), (3, "notebook-b")):
        shared = response.pod_resources.add(name=pod, namespace="lab")
        shared.containers.add(name="jupyter").devices.add(
            resource_name="nvidia.com/gpu.shared", device_ids=[f"{GPU2}::{replica}"]
        )
    response.pod_resources.add(name="web", namespace="default").containers.add(name="nginx")
    return response.SerializeToString()


EXPECTED = {
    GPU0: (PodContainer("ml", "train-7d9f", "worker"),),
    GPU1: (PodContainer("ml", "train-7d9f", "worker"),),
    MIG0: (PodContainer("serving", "infer-0", "server"),),
    MIG1: (PodContainer("serving", "infer-0", "server"),),
    GPU2: (
        PodContainer("lab", "notebook-a", "jupyter"),
        PodContainer("lab", "notebook-b", "jupyter"),
    ),
}


# -- the decoder against real encoding -------------------------------------------------------


def test_decoder_reads_what_protobuf_writes(messages: Any) -> None:
    assert devices_by_id(decode_list_response(answer(messages))) == EXPECTED


def test_decoder_on_an_empty_answer(messages: Any) -> None:
    assert decode_list_response(messages.ListPodResourcesResponse().SerializeToString()) == []
    assert decode_list_response(b"") == []


def test_decoder_keeps_the_requested_resources(messages: Any) -> None:
    found = decode_list_response(answer(messages), want=lambda name: name == "example.com/nic")
    assert [(f.resource, f.device_id, f.owner.container) for f in found] == [
        ("example.com/nic", "0000:3b:00.1", "worker")
    ]


def test_decoder_bounds_the_number_of_devices(messages: Any) -> None:
    response = messages.ListPodResourcesResponse()
    devices = response.pod_resources.add(name="p", namespace="n").containers.add(name="c")
    devices.devices.add(resource_name="nvidia.com/gpu", device_ids=[f"GPU-{i}" for i in range(11)])
    data = response.SerializeToString()
    assert len(decode_list_response(data, max_devices=11)) == 11
    with pytest.raises(WireError, match="more than 10 devices"):
        decode_list_response(data, max_devices=10)


@pytest.mark.parametrize(
    "name, device_id, reason",
    [
        ("p" * 254, GPU0, "more than 253"),
        ("pod", "GPU-\x00", "unprintable"),
        ("pod", "GPU-0 1", "spaces"),
        ("pod", "x" * 257, "more than 256"),
    ],
)
def test_decoder_rejects_impossible_strings(
    messages: Any, name: str, device_id: str, reason: str
) -> None:
    response = messages.ListPodResourcesResponse()
    response.pod_resources.add(name=name, namespace="n").containers.add(name="c").devices.add(
        resource_name="nvidia.com/gpu", device_ids=[device_id]
    )
    with pytest.raises(WireError, match=reason):
        decode_list_response(response.SerializeToString())


def test_every_truncation_decodes_or_raises_wire_error(messages: Any) -> None:
    data = answer(messages)
    for end in range(len(data)):
        with contextlib.suppress(WireError):
            decode_list_response(data[:end])


def test_random_bytes_decode_or_raise_wire_error() -> None:
    generator = random.Random(20240601)
    for _ in range(3000):
        data = bytes(generator.randrange(256) for _ in range(generator.randrange(1, 64)))
        with contextlib.suppress(WireError):
            decode_list_response(data)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\x0a\xff\xff\xff\xff\x0f", "length past the end"),
        (b"\x08" + b"\xff" * 11, "varint longer than 10 bytes"),
        (b"\x0b", "wire type 3"),
        (b"\x00", "field number 0"),
        (b"\x08\x01", "field 1 is not length-delimited"),
        (b"\x0a\x03\x0a\x01\xff", "truncated varint|length past the end|not UTF-8"),
        (b"\x0a\x04\x0a\x02\xc3\x28", "not UTF-8"),
    ],
)
def test_malformed_answers_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        decode_list_response(data)


def test_resource_names_and_replica_ids() -> None:
    assert is_gpu_resource("nvidia.com/gpu")
    assert is_gpu_resource("nvidia.com/gpu.shared")
    assert is_gpu_resource("nvidia.com/mig-3g.40gb")
    assert not is_gpu_resource("nvidia.com/gpus")
    assert not is_gpu_resource("amd.com/gpu")
    assert gpu_device_id(f"{GPU0}::12") == GPU0
    assert gpu_device_id(GPU0) == GPU0
    assert gpu_device_id("MIG-GPU-1/2/0") == "MIG-GPU-1/2/0"  # older MIG ids keep their slashes
    assert gpu_device_id("GPU-x::y") == "GPU-x::y"
    assert gpu_device_id("3") == "3"


# -- the client against a real gRPC server ---------------------------------------------------


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory: unix socket paths are limited to about 100 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="kubelet-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def kubelet(socket_dir: Path) -> Iterator[Callable[[Callable[[Any], bytes]], FakeKubelet]]:
    pytest.importorskip("grpc", reason="grpcio is not installed (the kubernetes or test extra)")
    started: list[FakeKubelet] = []

    def start(reply: Callable[[Any], bytes]) -> FakeKubelet:
        server = FakeKubelet(socket_dir / f"kubelet-{len(started)}.sock", reply)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def clients() -> Iterator[Callable[..., PodResourcesClient]]:
    made: list[PodResourcesClient] = []

    def make(**options: Any) -> PodResourcesClient:
        client = PodResourcesClient(**options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


class Clock:
    """A hand-driven clock for the cache."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_client_maps_gpus_to_containers(messages: Any, kubelet: Any, clients: Any) -> None:
    encoded = answer(messages)
    server = kubelet(lambda context: encoded)
    client = clients(socket_path=str(server.socket_path))
    assert client.gpu_devices() == EXPECTED
    assert client.last_error == ""


def test_client_caches_answers(messages: Any, kubelet: Any, clients: Any) -> None:
    encoded = answer(messages)
    server = kubelet(lambda context: encoded)
    clock = Clock()
    client = clients(socket_path=str(server.socket_path), cache_seconds=5.0, clock=clock)
    assert client.gpu_devices() == EXPECTED
    clock.now += 4.9
    assert client.gpu_devices() == EXPECTED
    assert server.calls == 1
    clock.now += 0.2
    assert client.gpu_devices() == EXPECTED
    assert server.calls == 2


def test_client_without_a_kubelet(socket_dir: Path, clients: Any) -> None:
    pytest.importorskip("grpc", reason="grpcio is not installed (the kubernetes or test extra)")
    client = clients(socket_path=str(socket_dir / "absent.sock"), timeout=1.0)
    started = time.monotonic()
    assert client.gpu_devices() == {}
    assert time.monotonic() - started < 3.0  # the 1 s deadline with a generous margin
    assert "UNAVAILABLE" in client.last_error


def test_client_gives_up_at_the_deadline(kubelet: Any, clients: Any) -> None:
    release = threading.Event()

    def hang(context: Any) -> bytes:
        release.wait(10)
        return b""

    server = kubelet(hang)
    client = clients(socket_path=str(server.socket_path), timeout=0.5)
    started = time.monotonic()
    try:
        assert client.gpu_devices() == {}
        assert time.monotonic() - started < 1.5 * 3
        assert "DEADLINE_EXCEEDED" in client.last_error
    finally:
        release.set()


def test_client_bounds_the_answer_size(messages: Any, kubelet: Any, clients: Any) -> None:
    response = messages.ListPodResourcesResponse()
    for i in range(200):
        response.pod_resources.add(name=f"pod-{i:04d}-" + "x" * 200, namespace="ns")
    encoded = response.SerializeToString()
    server = kubelet(lambda context: encoded)
    client = clients(socket_path=str(server.socket_path), max_response_bytes=len(encoded) - 1)
    assert client.gpu_devices() == {}
    assert "RESOURCE_EXHAUSTED" in client.last_error
    roomy = clients(socket_path=str(server.socket_path), max_response_bytes=len(encoded))
    assert roomy.gpu_devices() == {}
    assert roomy.last_error == ""


def test_client_survives_a_malformed_answer(kubelet: Any, clients: Any) -> None:
    server = kubelet(lambda context: b"\x0a\xff\xff\xff\xff\x0f")
    client = clients(socket_path=str(server.socket_path))
    assert client.gpu_devices() == {}
    assert "WireError" in client.last_error


def test_client_survives_an_error_status(kubelet: Any, clients: Any) -> None:
    import grpc

    def deny(context: Any) -> bytes:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "not for you")
        return b""

    server = kubelet(deny)
    client = clients(socket_path=str(server.socket_path))
    assert client.gpu_devices() == {}
    assert client.last_error == "PERMISSION_DENIED: not for you"


def test_client_recovers_when_the_kubelet_comes_back(
    messages: Any, kubelet: Any, socket_dir: Path, clients: Any
) -> None:
    encoded = answer(messages)
    clock = Clock()
    client = clients(socket_path=str(socket_dir / "kubelet-0.sock"), clock=clock)
    assert client.gpu_devices() == {}
    assert client.last_error
    kubelet(lambda context: encoded)  # serves exactly that socket
    assert client.gpu_devices() == {}  # the failure is cached too
    clock.now += 60
    assert client.gpu_devices() == EXPECTED
    assert client.last_error == ""


def test_client_without_grpcio(monkeypatch: pytest.MonkeyPatch, clients: Any) -> None:
    monkeypatch.setitem(sys.modules, "grpc", None)  # what a node without the extra sees
    client = clients(socket_path="/nonexistent/kubelet.sock")
    assert client.gpu_devices() == {}
    assert "grpcio is not installed" in client.last_error


def test_importing_and_configuring_does_not_load_grpcio() -> None:
    code = (
        "import sys; from exporter.kubelet import PodResourcesClient; "
        "PodResourcesClient(socket_path='/nonexistent.sock'); "
        "print('grpc' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("options", [{"timeout": 0}, {"max_response_bytes": 0}])
def test_client_rejects_impossible_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        PodResourcesClient(**options)


def test_the_stand_in_kubelets_answer_is_what_protobuf_writes(messages: Any) -> None:
    """tests/support/kubelet.py's encoder, used by the monitored test cluster, is the real wire."""
    pods = [
        PodDevices("ml", "train-0", "worker", [GPU0, GPU1]),
        PodDevices("serving", "infer-" + "x" * 150, "server", [MIG0], "nvidia.com/mig-1g.10gb"),
    ]
    response = messages.ListPodResourcesResponse()
    for pod in pods:
        container = response.pod_resources.add(name=pod.pod, namespace=pod.namespace)
        container.containers.add(name=pod.container).devices.add(
            resource_name=pod.resource, device_ids=list(pod.device_ids)
        )
    assert list_answer(pods) == response.SerializeToString()
    assert devices_by_id(decode_list_response(list_answer(pods))) == {
        device: (PodContainer(namespace=pod.namespace, pod=pod.pod, container=pod.container),)
        for pod in pods
        for device in pod.device_ids
    }
