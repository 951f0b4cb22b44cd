"""Build the GPU cluster dashboard: the provisioned JSON and the copy for manual import.

``python grafana/build_dashboard.py`` rewrites ``grafana/dashboards/gpu-cluster.json`` (what
provisioning loads: fixed datasource uid, no ``__inputs``) and ``grafana/gpu-cluster-import.json``
(the same dashboard with ``__inputs``, for Dashboards > New > Import). The import copy is always
derived from the provisioned one by ``import_copy``, so the two cannot drift;
``--check`` exits 1 when a committed file differs from what this script builds.

The dashboard itself is built by the ``dashboard`` package beside this script, one module per
row. Panels read the raw exporter metrics and the recording rules of ``prometheus/rules``.
Thresholds drawn on panels are the alert thresholds of ``prometheus/README.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROVISIONED = HERE / "dashboards" / "gpu-cluster.json"
IMPORT_COPY = HERE / "gpu-cluster-import.json"

# Run as a script (and loaded by path in the tests), so the package beside it is not importable
# until its folder is on the path; the repository's root too, for the definitions the panels
# share with the status service (status_api/vocabulary.py).
for folder in (HERE, HERE.parent):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from dashboard.document import ROWS, build, import_copy, render  # noqa: E402
from dashboard.panels import panel  # noqa: E402

__all__ = ["ROWS", "build", "expected_files", "import_copy", "main", "panel"]


def expected_files() -> dict[Path, str]:
    dashboard = build()
    return {PROVISIONED: render(dashboard), IMPORT_COPY: render(import_copy(dashboard))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only report whether the committed files are current"
    )
    args = parser.parse_args(argv)
    stale = []
    for path, text in expected_files().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(HERE.parent)}")
    if args.check and stale:
        names = ", ".join(str(path.relative_to(HERE.parent)) for path in stale)
        print(f"out of date: {names}; run python grafana/build_dashboard.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
