"""Which Kubernetes pod holds each GPU, from the kubelet's pod-resources API.

The kubelet serves gRPC ``v1.PodResourcesLister/List`` on a unix socket (by default
``/var/lib/kubelet/pod-resources/kubelet.sock``); its answer lists, per pod and container, the
device ids that device plugins handed out. For the NVIDIA device plugin those are GPU uuids
(``GPU-…``) for ``nvidia.com/gpu``, MIG uuids for ``nvidia.com/mig-<profile>``, and
``<uuid>::<replica>`` for time-sliced or MPS-shared GPUs, whose replica suffix is cut here so that
every id is a uuid NVML knows (one GPU then maps to every container sharing it). A plugin set to
``DEVICE_ID_STRATEGY=index`` reports GPU indexes instead, kept as they are.

grpcio is imported only when a client first asks the kubelet (the exporter's memory budget is
tight and most nodes run no kubelet); it comes with the ``kubernetes`` extra. The answer is
decoded by the small protobuf wire decoder below rather than by generated message classes, so
protobuf is not needed at run time. Field numbers follow the kubelet's
``k8s.io/kubelet/pkg/apis/podresources/v1/api.proto``::

    ListPodResourcesResponse { repeated PodResources pod_resources = 1; }
    PodResources             { string name = 1; string namespace = 2;
                               repeated ContainerResources containers = 3; }
    ContainerResources       { string name = 1; repeated ContainerDevices devices = 2; ... }
    ContainerDevices         { string resource_name = 1; repeated string device_ids = 2; ... }

Fields not listed (cpu ids, memory, topology, dynamic resources) are skipped by wire type.
Every call has a deadline, the answer a size bound, and no failure reaches the caller: it gets
an empty mapping, and :attr:`PodResourcesClient.last_error` says why.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from exporter.snapshot import PodContainer

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
LIST_METHOD = "/v1.PodResourcesLister/List"
DEFAULT_TIMEOUT_SECONDS = 1.0
DEFAULT_CACHE_SECONDS = 5.0
# A node with hundreds of pods answers in tens of kilobytes; gRPC's own default limit is 4 MiB.
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
MAX_DEVICES = 4096  # GPU device ids kept from one answer: 8 GPUs x 7 MIG slices x replicas
MAX_NAME_LENGTH = 253  # a DNS subdomain, the longest Kubernetes object name
MAX_DEVICE_ID_LENGTH = 256

_GPU_RESOURCE = "nvidia.com/gpu"
_GPU_SHARED_PREFIX = "nvidia.com/gpu."  # renamed shared resources, e.g. nvidia.com/gpu.shared
_MIG_PREFIX = "nvidia.com/mig-"
_REPLICA_SEPARATOR = "::"

# protobuf wire types
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """The answer is not a well-formed ListPodResourcesResponse (or exceeds a bound)."""


@dataclass(frozen=True)
class DeviceAssignment:
    """One device id of one resource, handed to one container."""

    resource: str
    device_id: str
    owner: PodContainer


def is_gpu_resource(name: str) -> bool:
    """True for the NVIDIA device plugin's resources: whole, shared and MIG GPUs."""
    return name == _GPU_RESOURCE or name.startswith((_GPU_SHARED_PREFIX, _MIG_PREFIX))


def gpu_device_id(device_id: str) -> str:
    """The GPU (or MIG) id of a device id: ``GPU-x::2`` (a shared replica) is ``GPU-x``."""
    base, separator, replica = device_id.rpartition(_REPLICA_SEPARATOR)
    if separator and base and replica.isascii() and replica.isdigit():
        return base
    return device_id


# -- the wire decoder ----------------------------------------------------------------------------


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
    raise WireError("varint longer than 10 bytes")


def _fields(data: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of one message: an int, or a memoryview for LENGTH."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        value: int | memoryview
        if wire_type == _VARINT:
            value, pos = _varint(data, pos)
        elif wire_type in (_FIXED64, _FIXED32):
            size = 8 if wire_type == _FIXED64 else 4
            if pos + size > len(data):
                raise WireError("truncated fixed-size field")
            value, pos = int.from_bytes(data[pos : pos + size], "little"), pos + size
        elif wire_type == _LENGTH:
            size, pos = _varint(data, pos)
            if size > len(data) - pos:
                raise WireError("length past the end of the message")
            value, pos = data[pos : pos + size], pos + size
        else:  # groups (3, 4) are not in this proto3 API; 6 and 7 do not exist
            raise WireError(f"unexpected wire type {wire_type}")
        yield number, wire_type, value


def _submessages(data: memoryview, number: int) -> Iterator[memoryview]:
    for field, wire_type, value in _fields(data):
        if field == number:
            if wire_type != _LENGTH or not isinstance(value, memoryview):
                raise WireError(f"field {number} is not length-delimited")
            yield value


def _string(data: memoryview, number: int, limit: int) -> str:
    """The last value of string field ``number`` (proto3: the last one wins), ``""`` if none."""
    found: memoryview | None = None
    for value in _submessages(data, number):
        found = value
    return "" if found is None else _text(found, limit)


def _text(value: memoryview, limit: int) -> str:
    if len(value) > limit:
        raise WireError(f"string of {len(value)} bytes, more than {limit}")
    try:
        text = bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("string that is not UTF-8") from None
    if not text.isprintable() or any(ch.isspace() for ch in text):
        raise WireError(f"string with unprintable characters or spaces: {text!r}")
    return text


def decode_list_response(
    data: bytes,
    *,
    want: Callable[[str], bool] = is_gpu_resource,
    max_devices: int = MAX_DEVICES,
) -> list[DeviceAssignment]:
    """The device assignments of a serialized ListPodResourcesResponse, for resources ``want``
    accepts. Raises :class:`WireError` on malformed input or more than ``max_devices``.

    Each message is walked once per field it needs, so memory stays proportional to what is kept,
    not to the size of the answer.
    """
    found: list[DeviceAssignment] = []
    top = memoryview(data)
    for pod in _submessages(top, 1):
        pod_name = _string(pod, 1, MAX_NAME_LENGTH)
        namespace = _string(pod, 2, MAX_NAME_LENGTH)
        for container in _submessages(pod, 3):
            owner: PodContainer | None = None
            for devices in _submessages(container, 2):
                resource = _string(devices, 1, MAX_NAME_LENGTH)
                if not want(resource):
                    continue
                if owner is None:
                    name = _string(container, 1, MAX_NAME_LENGTH)
                    owner = PodContainer(namespace=namespace, pod=pod_name, container=name)
                for raw_id in _submessages(devices, 2):
                    if len(found) >= max_devices:
                        raise WireError(f"more than {max_devices} devices")
                    device_id = _text(raw_id, MAX_DEVICE_ID_LENGTH)
                    found.append(DeviceAssignment(resource, device_id, owner))
    return found


def devices_by_id(assignments: list[DeviceAssignment]) -> dict[str, tuple[PodContainer, ...]]:
    """GPU (or MIG) id -> every container it is assigned to, replicas folded, in answer order."""
    owners: dict[str, list[PodContainer]] = {}
    for assignment in assignments:
        holders = owners.setdefault(gpu_device_id(assignment.device_id), [])
        if assignment.owner not in holders:
            holders.append(assignment.owner)
    return {device: tuple(holders) for device, holders in owners.items()}


# -- the client ----------------------------------------------------------------------------------


class PodResourcesClient:
    """Asks the kubelet which container holds each GPU; answers are cached for a few seconds.

    Thread-safe. A failed call (no socket, no kubelet, deadline, malformed answer, grpcio not
    installed) yields an empty mapping for ``cache_seconds`` as well, so a missing kubelet costs
    one attempt per period, not one per sampling pass.
    """

    def __init__(
        self,
        *,
        socket_path: str = DEFAULT_SOCKET,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        if max_response_bytes <= 0:
            raise ValueError(f"max_response_bytes must be positive, not {max_response_bytes}")
        self._target = f"unix:{socket_path}"
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._max_response_bytes = max_response_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._channel: Any = None
        self._call: Any = None
        self._cached: tuple[float, dict[str, tuple[PodContainer, ...]]] | None = None
        self._last_error = ""
        self._logged_error = ""

    @property
    def last_error(self) -> str:
        """Why the latest call failed; ``""`` after a successful one."""
        return self._last_error

    def gpu_devices(self) -> dict[str, tuple[PodContainer, ...]]:
        """GPU uuid (or MIG uuid, or index) -> the containers it is assigned to; never raises."""
        with self._lock:
            now = self._clock()
            if self._cached is not None and now - self._cached[0] < self._cache_seconds:
                return self._cached[1]
            try:
                devices = devices_by_id(decode_list_response(self._list()))
                self._last_error = self._logged_error = ""
            except Exception as error:  # the kubelet is optional: nothing here may stop a pass
                devices = {}
                self._failed(error)
                # a channel that failed waits out gRPC's reconnect backoff (up to minutes) before
                # it tries again; a fresh one next period sees a restarted kubelet at once
                self._close_channel()
            self._cached = (self._clock(), devices)
            return devices

    def close(self) -> None:
        """Close the channel; a later call opens a new one."""
        with self._lock:
            self._close_channel()

    def _close_channel(self) -> None:
        channel, self._channel, self._call = self._channel, None, None
        if channel is not None:
            try:
                channel.close()
            except Exception:  # closing is best effort; the channel is dropped either way
                log.debug("closing the kubelet channel failed", exc_info=True)

    def _list(self) -> bytes:
        if self._call is None:
            import grpc  # lazily: only nodes that configure the socket pay for grpcio

            self._channel = grpc.insecure_channel(
                self._target,
                options=[
                    ("grpc.max_receive_message_length", self._max_response_bytes),
                    ("grpc.enable_retries", 0),
                ],
            )
            # no serializers: the request is empty and the answer is decoded here
            self._call = self._channel.unary_unary(LIST_METHOD)
        answer = self._call(b"", timeout=self._timeout)
        if not isinstance(answer, bytes):
            raise WireError(f"unexpected answer type {type(answer).__name__}")
        return answer

    def _failed(self, error: Exception) -> None:
        if isinstance(error, ImportError):
            message = "grpcio is not installed (install the 'kubernetes' extra)"
        else:
            message = _describe(error)
        self._last_error = message
        # say it once per distinct reason, not every few seconds
        if message != self._logged_error:
            log.warning("kubelet pod-resources at %s: %s", self._target, message)
            self._logged_error = message


def _describe(error: Exception) -> str:
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    if callable(code) and callable(details):  # a grpc.RpcError
        try:
            return f"{code().name}: {details()}"
        except Exception:
            pass
    return f"{type(error).__name__}: {error}"
