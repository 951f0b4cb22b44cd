"""Allow ``python -m status_api``."""

from __future__ import annotations

from status_api.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
