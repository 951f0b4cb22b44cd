"""Real processes with hostile command lines, as any user on a GPU node can start them.

Their argv holds quotes, a newline, HTML, backslashes, a tab and bytes that are not UTF-8; the
scenario lists their pids, so the exporter resolves the command lines through /proc like any
other. The Prometheus text must escape them (one sample per line, label values parse back), and
the legacy JSON must carry the same text, with undecodable bytes replaced by U+FFFD and control
characters by spaces.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from simulator.exporters import Workers
from simulator.fakenvml import scenario as fake
from simulator.metrics import label_sets

SLEEP = [sys.executable.encode(), b"-c", b"import time; time.sleep(600)"]
HOSTILE_ARGS: dict[str, list[bytes]] = {
    "quotes": [b'say "hi"', b"it's"],
    "newline": [b"two\nlines", b"tab\there\n"],
    "html": [b"<script>alert(1)</script>", b"<img src=x onerror=alert(1)>"],
    "backslashes": [b"back\\slash", b"\\n", b"\\"],
    "not-utf8": [b"latin1-\xe9", b"\xff\xfe", b"cut-\xe2\x82"],
    "labels": [b'{x="y"}', b'",user="root'],
}


def expected_command(argv: list[bytes]) -> str:
    """What the exporter reports: UTF-8 with U+FFFD for bad bytes, control characters as spaces."""
    text = " ".join(arg.decode("utf-8", errors="replace") for arg in argv)
    return "".join(" " if ch in "\n\r\t" else ch for ch in text)


@pytest.fixture
def workers() -> Iterator[Workers]:
    with Workers() as started:
        yield started


def test_hostile_command_lines_are_escaped_and_preserved(exporter_factory, workers) -> None:
    argvs = {kind: [*SLEEP, *args] for kind, args in HOSTILE_ARGS.items()}
    pids = {kind: workers.spawn(argv) for kind, argv in argvs.items()}
    expected = {str(pids[kind]): expected_command(argv) for kind, argv in argvs.items()}
    scenario = fake.busy(2, list(pids.values()))
    exporter = exporter_factory(scenario, "--max-command-length", "1000", "--metrics.command-line")

    # Python may take a moment to start; until then /proc still shows the pre-exec command.
    text = exporter.wait_for_metrics(
        lambda t: (
            {labels["pid"]: labels["command"] for labels in label_sets(t, "gpu_process_info")}
            == expected
        ),
        timeout=15,
    )
    for line in text.split("\n"):
        if line.startswith("gpu_process_info{"):
            assert line.endswith(" 1.0"), f"a command broke the sample line: {line!r}"
    assert 'say \\"hi\\"' in text  # quotes escaped in the label value
    assert "back\\\\slash" in text  # so are backslashes

    response = exporter.session.post(
        f"{exporter.url}/get-status", json={"passwd": exporter.password}, timeout=5
    )
    assert response.status_code == 200
    response.content.decode("ascii")  # hostile text travels as \u escapes only
    status = json.loads(response.content)
    commands = {str(u["pid"]): u["command"] for g in status["gpus"] for u in g["users"]}
    assert commands == expected
    assert "\ufffd" in commands[str(pids["not-utf8"])]
    assert "<script>alert(1)</script>" in commands[str(pids["html"])]
    assert "Traceback" not in exporter.log()
