"""The hosts.txt parser: the one place that knows what a line of hosts.txt means.

Every command that reads hosts.txt (the status service and the Prometheus target generator) uses
this module, so the two can never disagree. The format::

    # comment lines and blank lines are ignored
    node1                 # a host name; the port is --node_port (7080 by default)
    node2:7081            # a host name with its own port
    10.0.0.12             # an IPv4 address, optionally with :port
    [fd00::12]:7080       # an IPv6 address, always in brackets, optionally with :port

A line that is none of these raises :class:`HostsFileError` naming the file and the line number.
That includes the other spellings of an IPv4 address that the C resolver accepts (``127.1``,
``0x7f.1``, ``0177.0.0.1``, ``2130706433``): they would be polled at an address nobody wrote, so
an address must be a dotted quad and a host name's last label is never all digits (RFC 1123).
A UTF-8 byte order mark at the start of the file (as some Windows editors write) is ignored.
Two lines naming the same node (same host, same port) are an error too: a duplicate is almost
always a typo, and polling a node twice would count its GPUs twice.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from servicekit.filewatch import WatchedFile

log = logging.getLogger(__name__)

DEFAULT_NODE_PORT = 7080
MAX_LINE_LENGTH = 1024
MAX_HOSTS = 100_000

# RFC 1123 labels; underscores are tolerated because internal DNS and /etc/hosts often have them.
_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_PORT = re.compile(r"^[0-9]{1,5}$")
_DOTTED_NUMBERS = re.compile(r"^[0-9.]+$")
# A part of an IPv4 address as inet_aton(3) reads it: hexadecimal, octal (leading 0) or decimal.
_INET_PART = re.compile(r"^(?:0[xX][0-9A-Fa-f]+|0[0-7]*|[1-9][0-9]*)$")
_BYTE_ORDER_MARK = "\ufeff"


class HostsFileError(ValueError):
    """hosts.txt has a line that is not a node; the message names the file and line."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source = source
        self.line = line


@dataclass(frozen=True)
class Host:
    """One node of hosts.txt.

    ``name`` is the host as written, without brackets or port (``node1``, ``10.0.0.1``,
    ``fd00::1``); ``text`` is the entry exactly as written on the line (``node2:7081``,
    ``[fd00::1]``), which is what labels and the legacy JSON show.
    """

    name: str
    port: int
    text: str
    line: int = 0
    ipv6: bool = False

    @property
    def address(self) -> str:
        """The host part of a URL: IPv6 addresses get their brackets back."""
        return f"[{self.name}]" if self.ipv6 else self.name

    @property
    def netloc(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def key(self) -> tuple[str, int]:
        """Identity for duplicate detection and for keeping state across re-reads."""
        if self.ipv6:
            return (ipaddress.IPv6Address(self.name).compressed, self.port)
        return (self.name.lower().rstrip("."), self.port)

    def url(self, path: str, *, scheme: str = "http") -> str:
        return f"{scheme}://{self.netloc}{path}"


def _port(text: str, *, default: int) -> int:
    if text == "":
        return default
    if not _PORT.match(text):
        raise ValueError(f"port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    return port


def _is_dotted_quad(name: str) -> bool:
    """Four decimal numbers 0-255 without leading zeros (older Pythons accept those)."""
    try:
        return str(ipaddress.IPv4Address(name)) == name
    except ValueError:
        return False


def _inet_part(part: str) -> int:
    if part[:2] in ("0x", "0X"):
        return int(part[2:], 16)
    return int(part, 8 if part.startswith("0") else 10)


def _inet_aton(name: str) -> ipaddress.IPv4Address | None:
    """The address the C resolver reads ``name`` as without asking DNS, as inet_aton(3) does:
    one to four parts, the last one filling the remaining bytes; None if it reads none."""
    parts = name.split(".")
    if len(parts) > 4 or not all(_INET_PART.match(part) for part in parts):
        return None
    *head, last = [_inet_part(part) for part in parts]
    if any(value > 0xFF for value in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = last
    for position, value in enumerate(head):
        number |= value << (8 * (3 - position))
    return ipaddress.IPv4Address(number)


def _check_address_spelling(name: str) -> None:
    """Refuse every numeric spelling of an IPv4 address except the dotted quad."""
    address = _inet_aton(name)
    if address is not None:
        raise ValueError(
            f"{name!r} is not a valid IPv4 address: the resolver would read it as {address}; "
            f"write {address} if that is the node"
        )
    if _DOTTED_NUMBERS.match(name):
        raise ValueError(f"{name!r} is not a valid IPv4 address")


def _check_host_name(name: str) -> None:
    if _is_dotted_quad(name):
        return
    _check_address_spelling(name)
    if len(name) > 253:
        raise ValueError("host name is longer than 253 characters")
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    for label in labels:
        if not _LABEL.match(label):
            raise ValueError(
                f"{name!r} is not a valid host name (letters, digits, '-', '_' and dots; "
                "IPv6 addresses go in brackets)"
            )
    if labels[-1].isdigit():
        # RFC 1123 2.1: the top-level label is never all digits, so a name cannot pass for an
        # address; resolvers treat such names as (malformed) addresses.
        raise ValueError(f"{name!r} is not a valid host name: its last label is all digits")


def _parse_bracketed(entry: str, *, default_port: int) -> tuple[str, int]:
    close = entry.find("]")
    if close < 0:
        raise ValueError(f"{entry!r}: '[' without a closing ']'")
    name, rest = entry[1:close], entry[close + 1 :]
    if rest and not rest.startswith(":"):
        raise ValueError(f"{entry!r}: expected ':port' after ']'")
    if rest == ":":
        raise ValueError(f"{entry!r}: missing port after ':'")
    if "%" in name:
        raise ValueError(f"{entry!r}: IPv6 zone ids are not supported; use a routable address")
    try:
        ipaddress.IPv6Address(name)
    except ValueError:
        raise ValueError(f"{name!r} is not a valid IPv6 address") from None
    return name, _port(rest[1:], default=default_port)


def parse_entry(entry: str, *, default_port: int = DEFAULT_NODE_PORT, line: int = 0) -> Host:
    """One entry (comment and blanks already removed); ValueError says what is wrong."""
    if "://" in entry or "/" in entry:
        raise ValueError(f"{entry!r}: write the host only, without scheme or path")
    if any(c.isspace() for c in entry):
        raise ValueError(f"{entry!r}: one node per line (found whitespace inside the entry)")
    if entry.startswith("["):
        name, port = _parse_bracketed(entry, default_port=default_port)
        return Host(name=name, port=port, text=entry, line=line, ipv6=True)
    if entry.count(":") > 1:
        raise ValueError(f"{entry!r}: IPv6 addresses must be written in brackets, e.g. [::1]")
    name, _, port_text = entry.partition(":")
    if not name:
        raise ValueError(f"{entry!r}: missing host before ':'")
    if entry.endswith(":"):
        raise ValueError(f"{entry!r}: missing port after ':'")
    _check_host_name(name)
    return Host(name=name, port=_port(port_text, default=default_port), text=entry, line=line)


def parse_hosts(
    text: str, *, default_port: int = DEFAULT_NODE_PORT, source: str = "hosts.txt"
) -> list[Host]:
    """The nodes of a hosts.txt text in file order; HostsFileError on the first bad line."""
    hosts: list[Host] = []
    seen: dict[tuple[str, int], Host] = {}
    if text.startswith(_BYTE_ORDER_MARK):
        text = text[len(_BYTE_ORDER_MARK) :]
    # Only "\n" ends a line (as in editors and wc -l), so line numbers match what people see.
    for number, raw in enumerate(text.split("\n"), start=1):
        if len(raw) > MAX_LINE_LENGTH:
            raise HostsFileError(source, number, f"line longer than {MAX_LINE_LENGTH} characters")
        entry = raw.split("#", 1)[0].strip(" \t\r")
        if not entry:
            continue
        try:
            host = parse_entry(entry, default_port=default_port, line=number)
        except ValueError as error:
            raise HostsFileError(source, number, str(error)) from None
        first = seen.get(host.key)
        if first is not None:
            raise HostsFileError(
                source,
                number,
                f"{entry!r} is the same node as line {first.line} ({first.text!r})",
            )
        seen[host.key] = host
        hosts.append(host)
        if len(hosts) > MAX_HOSTS:
            raise HostsFileError(source, number, f"more than {MAX_HOSTS} nodes")
    return hosts


def load_hosts(path: Path, *, default_port: int = DEFAULT_NODE_PORT) -> list[Host]:
    """Read and parse a hosts file; unreadable files raise HostsFileError too (line 0)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise HostsFileError(str(path), 0, f"cannot read: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise HostsFileError(str(path), line, "not valid UTF-8 text") from None
    return parse_hosts(text, default_port=default_port, source=str(path))


def _same_nodes(old: list[Host], new: list[Host]) -> bool:
    return [(h.key, h.text) for h in old] == [(h.key, h.text) for h in new]


class HostsWatcher:
    """The current node list of a hosts file, re-read when the file changes.

    A change that breaks the file keeps the last good list and logs the error once per change;
    the first read happens in the constructor and raises, so a service never starts on a broken
    file.
    """

    def __init__(self, path: Path, *, default_port: int = DEFAULT_NODE_PORT) -> None:
        self.path = path
        self._file = WatchedFile(
            path,
            lambda: load_hosts(path, default_port=default_port),
            what="hosts file",
            errors=(HostsFileError,),
            keeping=lambda hosts: f"the previous {len(hosts)} nodes",
            on_reload=self._log_change,
            logger=log,
        )

    def _log_change(self, old: list[Host], new: list[Host]) -> None:
        if not _same_nodes(old, new):
            log.info("%s changed: %d nodes (was %d)", self.path, len(new), len(old))

    @property
    def hosts(self) -> list[Host]:
        return self._file.value

    @property
    def last_error(self) -> str:
        return self._file.last_error

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when the node list changed."""
        old = self._file.value
        return self._file.refresh() and not _same_nodes(old, self._file.value)
