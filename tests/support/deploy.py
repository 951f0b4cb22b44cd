"""Shared by the deployment tests: where the files are, the tools that check them."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SCHEMAS = REPO / "tests" / "schemas"
SYSTEMD = DEPLOY / "systemd"
COMPOSE_DIR = DEPLOY / "compose"
KUBERNETES = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
BIN = Path(sys.executable).parent
TIMEOUT = 60


def tool(name: str) -> str:
    """Path of a command-line tool the tests need; fail (never skip) when it is missing."""
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    assert path, f"{name} is not installed; scripts/test.sh installs it"
    return str(path)


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def parses(parser: Any, arguments: list[str]) -> Any:
    """``arguments`` parsed by the program's own parser; a usage error fails with the text."""
    try:
        return parser.parse_args(arguments)
    except SystemExit as error:
        raise AssertionError(f"{parser.prog} rejects {arguments}") from error


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= and compose's .env read simple values."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            words = shlex.split(value)
            values[key.strip()] = " ".join(words)
    return values


def schema_errors(validator: jsonschema.protocols.Validator, document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    ]
