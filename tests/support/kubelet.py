"""A stand-in kubelet: a real gRPC server on a unix socket serving pod-resources ``List``."""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
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
