"""A stand-in kubelet: a real gRPC server on a unix socket serving pod-resources ``List``."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.kubelet import LIST_METHOD


class FakeKubelet:
    """A real gRPC server on a unix socket serving ``List`` with whatever ``reply`` returns."""

    def __init__(self, socket_path: Path, reply: Callable[[Any], bytes]) -> None:
        import grpc

        self.socket_path = socket_path
        self.calls = 0
        self._reply = reply
        service, method = LIST_METHOD.strip("/").split("/")
        handler = grpc.method_handlers_generic_handler(
            service, {method: grpc.unary_unary_rpc_method_handler(self._list)}
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((handler,))
        assert self.server.add_insecure_port(f"unix:{socket_path}")
        self.server.start()

    def _list(self, request: bytes, context: Any) -> bytes:
        self.calls += 1
        assert request == b""  # ListPodResourcesRequest has no fields
        return self._reply(context)

    def stop(self) -> None:
        self.server.stop(grace=None).wait(5)


@dataclass(frozen=True)
class PodDevices:
    """One container of one pod holding ``device_ids`` of ``resource``."""

    namespace: str
    pod: str
    container: str
    device_ids: Sequence[str]
    resource: str = "nvidia.com/gpu"


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        out.append(low | (0x80 if number else 0))
        if not number:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One protobuf length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def list_answer(pods: Sequence[PodDevices]) -> bytes:
    """A ListPodResourcesResponse (kubelet podresources v1 field numbers) with ``pods``."""
    answer = b""
    for pod in pods:
        devices = _field(1, pod.resource.encode()) + b"".join(
            _field(2, device.encode()) for device in pod.device_ids
        )
        container = _field(1, pod.container.encode()) + _field(2, devices)
        resources = _field(1, pod.pod.encode()) + _field(2, pod.namespace.encode())
        answer += _field(1, resources + _field(3, container))
    return answer


@contextmanager
def running_kubelet(pods: Sequence[PodDevices]) -> Iterator[FakeKubelet]:
    """A FakeKubelet answering ``pods``, on a socket in a short temporary directory.

    Unix socket paths are limited to about 100 bytes, too few for pytest's ``tmp_path``.
    """
    directory = Path(tempfile.mkdtemp(prefix="kubelet-"))
    answer = list_answer(pods)
    kubelet = None
    try:
        kubelet = FakeKubelet(directory / "kubelet.sock", lambda context: answer)
        yield kubelet
    finally:
        if kubelet is not None:
            kubelet.stop()
        shutil.rmtree(directory, ignore_errors=True)
