"""Build the fake ``libnvidia-ml.so.1`` from ``fake_nvml.c`` against the packaged ``nvml.h``.

``python -m simulator.fakenvml.build [--out DIR]`` builds into ``build/fakenvml/`` by default and
prints the library's path. The build is skipped when the library is newer than its sources.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_OUT = REPO / "build" / "fakenvml"
LIBRARY = "libnvidia-ml.so.1"
CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-pthread")


class BuildError(RuntimeError):
    """The fake library cannot be built; the message says what is missing."""


def sources() -> list[Path]:
    return sorted(HERE.glob("*.c")) + sorted(HERE.glob("*.h"))


def _cuda_major(include_dir: Path) -> int:
    match = re.fullmatch(r"cu(\d+)", include_dir.parent.name)
    return int(match.group(1)) if match else -1


def find_header() -> Path:
    """``nvml.h`` from the ``nvidia-nvml-dev`` package, the newest CUDA major if several."""
    spec = importlib.util.find_spec("nvidia")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    found = [h for root in roots for h in root.glob("*/include/nvml.h")]
    if not found:
        raise BuildError(
            "nvml.h not found: install the Python package nvidia-nvml-dev "
            "(it provides nvidia/<cuda>/include/nvml.h)"
        )
    return max(found, key=lambda header: (_cuda_major(header.parent), str(header)))


def find_compiler() -> str:
    compiler = shutil.which("gcc")
    if compiler is None:
        raise BuildError("gcc not found on PATH: install gcc to build the fake NVML library")
    return compiler


def _is_fresh(library: Path, inputs: list[Path]) -> bool:
    if not library.exists():
        return False
    built = library.stat().st_mtime_ns
    return all(path.stat().st_mtime_ns < built for path in inputs)


def build(out_dir: Path = DEFAULT_OUT, *, force: bool = False) -> Path:
    """Compile the library into ``out_dir`` (with a ``libnvidia-ml.so`` link); return its path."""
    out_dir = Path(out_dir)
    library = out_dir / LIBRARY
    header = find_header()
    inputs = [*sources(), header, Path(__file__).resolve()]
    if not force and _is_fresh(library, inputs):
        _link(out_dir)
        return library
    compiler = find_compiler()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Compile to a temporary name and rename, so a concurrent user never loads half a file.
    fd, temporary = tempfile.mkstemp(prefix=".libnvidia-ml.", suffix=".tmp", dir=out_dir)
    os.close(fd)
    command = [
        compiler, *CFLAGS, f"-Wl,-soname,{LIBRARY}", f"-I{header.parent}",
        "-o", temporary, *(str(s) for s in sources() if s.suffix == ".c"),
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BuildError(f"compiling the fake NVML library failed:\n{result.stderr.strip()}")
        os.chmod(temporary, 0o755)  # mkstemp's 0600 would hide it from other users
        os.replace(temporary, library)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    _link(out_dir)
    return library


def _link(out_dir: Path) -> None:
    link = out_dir / "libnvidia-ml.so"
    if link.is_symlink() and os.readlink(link) == LIBRARY:
        return
    temporary = out_dir / f".libnvidia-ml.so.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(LIBRARY)
    os.replace(temporary, link)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    try:
        library = build(args.out, force=args.force)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(library)
    return 0


if __name__ == "__main__":
    sys.exit(main())
