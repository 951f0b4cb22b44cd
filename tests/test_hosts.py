"""The hosts.txt parser: every valid form, every kind of bad line, re-reading a changed file."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.proc import free_port
from status_api.hosts import (
    Host,
    HostsFileError,
    HostsWatcher,
    load_hosts,
    parse_entry,
    parse_hosts,
)
from tests.support.status_service import child_env, status_command

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("entry", "name", "port", "ipv6", "netloc"),
    [
        ("node1", "node1", 7080, False, "node1:7080"),
        ("node2:7081", "node2", 7081, False, "node2:7081"),
        ("gpu-07.lab.example.org", "gpu-07.lab.example.org", 7080, False,
         "gpu-07.lab.example.org:7080"),
        ("node_3", "node_3", 7080, False, "node_3:7080"),
        ("fqdn.example.", "fqdn.example.", 7080, False, "fqdn.example.:7080"),
        ("10.0.0.12", "10.0.0.12", 7080, False, "10.0.0.12:7080"),
        ("10.0.0.12:9100", "10.0.0.12", 9100, False, "10.0.0.12:9100"),
        ("[::1]", "::1", 7080, True, "[::1]:7080"),
        ("[fd00::12]:7081", "fd00::12", 7081, True, "[fd00::12]:7081"),
        ("[2001:db8::1]:1", "2001:db8::1", 1, True, "[2001:db8::1]:1"),
        ("n:65535", "n", 65535, False, "n:65535"),
        ("1node", "1node", 7080, False, "1node:7080"),
        ("10.0.0.12.lab", "10.0.0.12.lab", 7080, False, "10.0.0.12.lab:7080"),
        ("gpu.0x7f", "gpu.0x7f", 7080, False, "gpu.0x7f:7080"),
        ("0.0.0.0", "0.0.0.0", 7080, False, "0.0.0.0:7080"),
    ],
)  # fmt: skip
def test_valid_entries(entry: str, name: str, port: int, ipv6: bool, netloc: str) -> None:
    host = parse_entry(entry, default_port=7080)
    assert (host.name, host.port, host.ipv6, host.netloc, host.text) == (
        name,
        port,
        ipv6,
        netloc,
        entry,
    )
    assert host.url("/get-status") == f"http://{netloc}/get-status"


def test_comments_blank_lines_and_order(tmp_path: Path) -> None:
    text = (
        "# cluster\n"
        "\n"
        "node1\n"
        "   node2:7081    # trailing comment\n"
        "\t\n"
        "#node3\n"
        "[::1]  \n"
        "10.1.2.3#no space before the comment\n"
    )
    hosts = parse_hosts(text, default_port=9000)
    assert [(h.text, h.netloc, h.line) for h in hosts] == [
        ("node1", "node1:9000", 3),
        ("node2:7081", "node2:7081", 4),
        ("[::1]", "[::1]:9000", 7),
        ("10.1.2.3", "10.1.2.3:9000", 8),
    ]


def test_empty_file_is_no_nodes() -> None:
    assert parse_hosts("") == []
    assert parse_hosts("# only comments\n\n   \n") == []


def test_windows_line_endings() -> None:
    assert [h.text for h in parse_hosts("node1\r\nnode2\r\n")] == ["node1", "node2"]


def test_byte_order_mark_at_the_start_is_ignored(tmp_path: Path) -> None:
    """Notepad and other Windows editors start a UTF-8 file with a BOM."""
    path = tmp_path / "hosts.txt"
    path.write_bytes(b"\xef\xbb\xbfnode1\r\nnode2:7081\r\n")
    hosts = load_hosts(path)
    assert [(h.name, h.port, h.line) for h in hosts] == [("node1", 7080, 1), ("node2", 7081, 2)]
    assert [h.text for h in parse_hosts("\ufeff# comment\nnode1\n")] == ["node1"]
    with pytest.raises(HostsFileError, match=r"hosts\.txt:2: .*not a valid host name"):
        parse_hosts("node1\n\ufeffnode2\n")  # only at the very start


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("node1 node2", "one node per line"),
        ("http://node1:7080", "without scheme or path"),
        ("node1/metrics", "without scheme or path"),
        ("node1:", "missing port"),
        (":7080", "missing host"),
        ("node1:http", "not a number"),
        ("node1:0", "out of range"),
        ("node1:65536", "out of range"),
        ("node1:123456", "not a number"),
        ("node1:-1", "not a number"),
        ("::1", "must be written in brackets"),
        ("fd00::1:7080", "must be written in brackets"),
        ("[::1", "without a closing"),
        ("[::1]7080", "expected ':port'"),
        ("[::1]:", "missing port"),
        ("[not-v6]", "not a valid IPv6 address"),
        ("[10.0.0.1]", "not a valid IPv6 address"),
        ("[fe80::1%eth0]", "zone ids are not supported"),
        ("999.1.1.1", "not a valid IPv4 address"),
        ("10.0.0", "not a valid IPv4 address"),
        ("1234", "not a valid IPv4 address"),
        # Numeric spellings the C resolver reads as an address nobody wrote.
        ("0x7f.1", "resolver would read it as 127.0.0.1"),
        ("127.1", "resolver would read it as 127.0.0.1"),
        ("0177.0.0.1", "resolver would read it as 127.0.0.1"),
        ("2130706433", "resolver would read it as 127.0.0.1"),
        ("0x7f.0.0.1:7081", "resolver would read it as 127.0.0.1"),
        ("010.0.0.12", "resolver would read it as 8.0.0.12"),
        ("0x7f", "resolver would read it as 0.0.0.127"),
        ("08.1.1.1", "not a valid IPv4 address"),
        ("1.2.3.4.5", "not a valid IPv4 address"),
        # RFC 1123: the last label of a host name is never all digits.
        ("node.123", "its last label is all digits"),
        ("0x100.1", "its last label is all digits"),
        ("-node", "not a valid host name"),
        ("node-", "not a valid host name"),
        ("no..de", "not a valid host name"),
        ("nöde", "not a valid host name"),
        ("node;rm", "not a valid host name"),
        ("a" * 64, "not a valid host name"),
        (".".join(["a" * 60] * 5), "longer than 253"),
        ("x" * 2000, "line longer than"),
    ],
)  # fmt: skip
def test_bad_lines_name_file_and_line(line: str, message: str) -> None:
    text = f"# header\nnode0\n{line}\nnode9\n"
    with pytest.raises(HostsFileError) as caught:
        parse_hosts(text, source="cluster/hosts.txt")
    assert caught.value.line == 3
    assert str(caught.value).startswith("cluster/hosts.txt:3: ")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("node1", "node1"),
        ("node1", "NODE1"),
        ("node1", "node1:7080"),  # the default port spelled out
        ("[::1]", "[0:0:0:0:0:0:0:1]:7080"),
        ("10.0.0.1:9", "10.0.0.1:9"),
    ],
)
def test_duplicates_are_errors_naming_both_lines(first: str, second: str) -> None:
    with pytest.raises(HostsFileError) as caught:
        parse_hosts(f"{first}\nother\n{second}\n", default_port=7080)
    assert caught.value.line == 3
    assert "same node as line 1" in str(caught.value)


def test_same_host_on_other_ports_is_allowed() -> None:
    hosts = parse_hosts("node1:7080\nnode1:7081\n")
    assert [h.netloc for h in hosts] == ["node1:7080", "node1:7081"]


def test_load_hosts_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(HostsFileError, match=r"missing\.txt:0: cannot read"):
        load_hosts(missing)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"node1\nnode2\n\xff\xfe\n")
    with pytest.raises(HostsFileError, match=r"binary\.txt:3: not valid UTF-8"):
        load_hosts(binary)


def test_shipped_example_parses() -> None:
    hosts = load_hosts(REPO / "hosts.txt")
    assert hosts, "the example hosts.txt should name at least one node"


def _replace(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def test_watcher_follows_changes_and_keeps_last_good(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "hosts.txt"
    path.write_text("node1\nnode2\n")
    watcher = HostsWatcher(path)
    assert [h.text for h in watcher.hosts] == ["node1", "node2"]
    assert watcher.refresh() is False  # unchanged

    _replace(path, "node1\nnode2\nnode3:7081\n")
    assert watcher.refresh() is True
    assert [h.text for h in watcher.hosts] == ["node1", "node2", "node3:7081"]

    with caplog.at_level(logging.ERROR, logger="status_api.hosts"):
        _replace(path, "node1\nbad line\n")
        assert watcher.refresh() is False
    assert [h.text for h in watcher.hosts] == ["node1", "node2", "node3:7081"]
    assert "hosts.txt:2:" in watcher.last_error
    assert "keeping the previous 3 nodes" in caplog.text

    path.write_text("node2\n")  # rewritten in place, not renamed
    assert watcher.refresh() is True
    assert [h.text for h in watcher.hosts] == ["node2"]
    assert watcher.last_error == ""


def test_watcher_refuses_a_broken_file_at_start(tmp_path: Path) -> None:
    path = tmp_path / "hosts.txt"
    path.write_text("node1\nnode1\n")
    with pytest.raises(HostsFileError, match=r"hosts\.txt:2:"):
        HostsWatcher(path)


def test_watcher_survives_the_file_disappearing(tmp_path: Path) -> None:
    path = tmp_path / "hosts.txt"
    path.write_text("node1\n")
    watcher = HostsWatcher(path)
    path.unlink()
    assert watcher.refresh() is False
    assert [h.text for h in watcher.hosts] == ["node1"]
    assert "cannot read" in watcher.last_error


# ---- properties ------------------------------------------------------------------------------

_label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True).filter(
    # All digits, or hexadecimal: the resolver could read the name as an address.
    lambda label: not label.isdigit() and not re.fullmatch(r"0x[0-9a-f]+", label)
)
_hostname = st.lists(_label, min_size=1, max_size=4).map(".".join)
_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
_port = st.integers(min_value=1, max_value=65535)


@st.composite
def _entries(draw: st.DrawFn) -> tuple[str, int | None]:
    host = draw(st.one_of(_hostname, _ipv4, _ipv6))
    port = draw(st.none() | _port)
    return (host if port is None else f"{host}:{port}", port)


@settings(max_examples=300, deadline=None)
@given(entry=_entries(), default=_port)
def test_property_valid_entries_round_trip(entry: tuple[str, int | None], default: int) -> None:
    text, port = entry
    host = parse_entry(text, default_port=default)
    assert host.text == text
    assert host.port == (default if port is None else port)
    reparsed = parse_entry(host.netloc, default_port=default)
    assert reparsed.key == host.key


@st.composite
def _numeric_spellings(draw: st.DrawFn) -> tuple[str, ipaddress.IPv4Address]:
    """An IPv4 address written as inet_aton(3) reads it: 1 to 4 parts, each in any base."""
    address = draw(st.ip_addresses(v=4))
    value = int(address)
    count = draw(st.integers(min_value=1, max_value=4))
    head = [(value >> (8 * (3 - i))) & 0xFF for i in range(count - 1)]
    last = value & ((1 << (8 * (4 - len(head)))) - 1)
    spelled = [draw(st.sampled_from(["{:d}", "0{:o}", "0x{:x}", "0X{:X}"])).format(part)
               for part in [*head, last]]  # fmt: skip
    return ".".join(spelled), address


@settings(max_examples=300, deadline=None)
@given(spelling=_numeric_spellings())
def test_property_only_the_dotted_quad_spelling_is_accepted(
    spelling: tuple[str, ipaddress.IPv4Address],
) -> None:
    text, address = spelling
    if text == str(address):
        assert parse_entry(text).name == text
        return
    with pytest.raises(ValueError, match=re.escape(f"resolver would read it as {address};")):
        parse_entry(text)


def test_a_numeric_spelling_stops_the_service_at_start(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("# lab\nnode1\n0x7f.1:7081\n")
    result = subprocess.run(
        status_command(hosts, free_port()),
        capture_output=True, text=True, timeout=30, env=child_env(), check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"{hosts}:3: '0x7f.1' is not a valid IPv4 address" in result.stderr
    assert "Traceback" not in result.stderr


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=300))
def test_property_any_text_parses_or_raises_hosts_file_error(text: str) -> None:
    try:
        hosts = parse_hosts(text)
    except HostsFileError as error:
        assert 1 <= error.line <= text.count("\n") + 1
        assert str(error).startswith(f"hosts.txt:{error.line}: ")
        return
    assert all(isinstance(host, Host) for host in hosts)
    assert len({host.key for host in hosts}) == len(hosts)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(_entries(), max_size=20), junk=st.text(alphabet=" \t#abc", max_size=10))
def test_property_comments_never_change_the_nodes(
    lines: list[tuple[str, int | None]], junk: str
) -> None:
    entries = list(dict.fromkeys(text for text, _ in lines))
    try:
        plain = parse_hosts("\n".join(entries))
    except HostsFileError:
        return  # the same node written two ways is a duplicate; covered above
    commented = "\n".join(f"  {entry}  # {junk}" for entry in entries)
    assert [h.key for h in parse_hosts(commented)] == [h.key for h in plain]
