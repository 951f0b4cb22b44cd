"""``python -m tests.nvml_probes NAME [ARGUMENTS]``: run one probe, print its findings.

``ARGUMENTS`` is a JSON list passed to the probe after its findings dict. The last line of
stdout is ``RESULT <json>``; a probe that raises exits non-zero with its traceback.
"""

from __future__ import annotations

import json
import sys

from tests.nvml_probes import devices, gpm, health, mig
from tests.nvml_probes.common import PROBES, Out

MODULES = (devices, gpm, health, mig)  # imported for the probes they register


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2 or argv[0] not in PROBES:
        print(f"usage: python -m tests.nvml_probes {{{','.join(PROBES)}}} [JSON]", file=sys.stderr)
        return 2
    arguments = json.loads(argv[1]) if len(argv) == 2 else []
    out: Out = {}
    PROBES[argv[0]](out, *arguments)
    print("RESULT " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
