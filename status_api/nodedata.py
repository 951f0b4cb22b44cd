"""Checking what a node answered to ``POST /get-status`` before anything else sees it.

A node's answer is untrusted input: the exporter may be an old node_info.py, a broken proxy, or
something else listening on the port. :func:`validate_status` accepts exactly the legacy schema
(memory in MiB, utilisation in percent; a value the node could not read may be ``null``) and
returns a fresh dict in the legacy key order with bounded strings and lists, or raises
:class:`NodeDataError` saying which field is wrong. Nothing a node sends can crash the service.

A process's memory is ``mem(MiB)``, as node_info.py wrote it; gpu-exporter 0.1.0 wrote ``mem``,
which is accepted too so that a fleet can be upgraded node by node. The result always says
``mem(MiB)``. Key order in the answer never matters (node_info.py sorted its keys).

Keys beyond the legacy schema are dropped.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_STRING = 4096
MAX_SHORT_STRING = 256
MAX_GPUS = 1024
MAX_USERS = 65536
MAX_IPS = 1024

USER_MEMORY = "mem(MiB)"  # a process's GPU memory, as node_info.py named it
_USER_MEMORY_0_1 = "mem"  # what gpu-exporter 0.1.0 sent instead


class NodeDataError(ValueError):
    """The node's answer is not the legacy status JSON; the message names the field."""


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _string(value: object, where: str, limit: int = MAX_SHORT_STRING) -> str:
    if not isinstance(value, str):
        raise NodeDataError(f"{where}: expected a string, got {_describe(value)}")
    return value if len(value) <= limit else value[:limit]


def _integer(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise NodeDataError(f"{where}: expected an integer, got {_describe(value)}")
    return value


def _number(value: object, where: str) -> int | float | None:
    """A measurement: a finite number, or null when the node could not read it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NodeDataError(f"{where}: expected a number or null, got {_describe(value)}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NodeDataError(f"{where}: expected a finite number, got {value!r}")
        if value.is_integer():
            return int(value)
    return value


def _list(value: object, where: str, limit: int) -> list[Any]:
    if not isinstance(value, list):
        raise NodeDataError(f"{where}: expected a list, got {_describe(value)}")
    if len(value) > limit:
        raise NodeDataError(f"{where}: more than {limit} entries")
    return value


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise NodeDataError(f"{where}: expected an object, got {_describe(value)}")
    return value


def _field(document: dict[str, Any], key: str, where: str) -> Any:
    try:
        return document[key]
    except KeyError:
        raise NodeDataError(f"{where}: missing {key!r}") from None


def _user_memory(user: dict[str, Any], where: str) -> int | float | None:
    """The process's memory under either name; the error names the one the node used."""
    for key in (USER_MEMORY, _USER_MEMORY_0_1):
        if key in user:
            return _number(user[key], f"{where}.{key}")
    raise NodeDataError(f"{where}: missing {USER_MEMORY!r}")


def _user(value: object, where: str) -> dict[str, Any]:
    user = _object(value, where)
    return {
        "pid": _integer(_field(user, "pid", where), f"{where}.pid"),
        "username": _string(_field(user, "username", where), f"{where}.username"),
        USER_MEMORY: _user_memory(user, where),
        "command": _string(_field(user, "command", where), f"{where}.command", MAX_STRING),
    }


def _gpu(value: object, where: str) -> dict[str, Any]:
    gpu = _object(value, where)
    users = _list(_field(gpu, "users", where), f"{where}.users", MAX_USERS)
    return {
        "index": _integer(_field(gpu, "index", where), f"{where}.index"),
        "name": _string(_field(gpu, "name", where), f"{where}.name"),
        "use_mem": _number(_field(gpu, "use_mem", where), f"{where}.use_mem"),
        "tot_mem": _number(_field(gpu, "tot_mem", where), f"{where}.tot_mem"),
        "utilize": _number(_field(gpu, "utilize", where), f"{where}.utilize"),
        "temp": _number(_field(gpu, "temp", where), f"{where}.temp"),
        "users": [_user(user, f"{where}.users[{i}]") for i, user in enumerate(users)],
    }


def _ips(value: object) -> list[list[str]]:
    pairs = []
    for i, pair in enumerate(_list(value, "ips", MAX_IPS)):
        if not isinstance(pair, list) or len(pair) != 2:
            raise NodeDataError(f"ips[{i}]: expected [interface, address], got {_describe(pair)}")
        pairs.append([_string(pair[0], f"ips[{i}][0]"), _string(pair[1], f"ips[{i}][1]")])
    return pairs


def validate_status(document: object) -> dict[str, Any]:
    """The checked node status in legacy key order; NodeDataError says what is wrong."""
    node = _object(document, "status")
    gpus = _list(_field(node, "gpus", "status"), "gpus", MAX_GPUS)
    return {
        "hostname": _string(_field(node, "hostname", "status"), "hostname"),
        "last_update": _string(_field(node, "last_update", "status"), "last_update"),
        "ips": _ips(_field(node, "ips", "status")),
        "gpus": [_gpu(gpu, f"gpus[{i}]") for i, gpu in enumerate(gpus)],
    }


def parse_status(body: bytes) -> dict[str, Any]:
    """Decode and check a node's answer body."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise NodeDataError(f"answer is not UTF-8 text (byte {error.start})") from None
    try:
        document = json.loads(text)
    except RecursionError:
        raise NodeDataError("answer is nested too deeply to be a node status") from None
    except ValueError as error:
        raise NodeDataError(f"answer is not JSON: {str(error)[:120]}") from None
    return validate_status(document)
