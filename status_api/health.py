"""Each GPU's health on the cluster view: a state and the reasons for it, in words.

The legacy JSON has no health, so it comes from the node's ``/metrics`` (status_api/nodemetrics.py,
read every ``--power-interval`` seconds) together with the legacy readings:

* ``lost``: the legacy JSON gives the GPU no readings at all (memory, utilization and temperature
  all null) and ``gpu_up`` is 0; or no readings and no ``gpu_up`` for it (a node without
  ``/metrics``, such as the old node_info.py), which the reason says;
* ``sick``: a critical problem, grouped as the critical alerts of prometheus/rules/alerts.yml:
  a recent XID 48, 64, 74, 79, 94, 95, 119 or 120, or failed row remapping;
* ``warning``: worth a look, as the warning alerts: a recent XID 63 or 92, a row remap or page
  retirement waiting for a reset, a PCIe link below its maximum while the GPU is busy
  (utilization above ``--free-utilization``: idle GPUs slow their link down on purpose), a MIG
  mode change waiting for a reset, or no readings while ``gpu_up`` still says 1;
* ``ok``: none of these.

An XID is recent when its time (the node's clock) is within ``--xid-recent`` seconds of this
service's clock, either way: a node clock somewhat ahead still counts, a nonsense time does not.
XID codes outside the table below are not shown: the alerts ignore them too (most, like 13, 31
and 43, are application errors, not the GPU's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from status_api.nodemetrics import GpuHealth

OK, WARNING, SICK, LOST = "ok", "warning", "sick", "lost"
_RANK = {OK: 0, WARNING: 1, SICK: 2, LOST: 3}

# XID code -> (state while recent, what it means), by the alerts' grouping.
XIDS: dict[int, tuple[str, str]] = {
    48: (SICK, "double-bit ECC error"),
    63: (WARNING, "row remap or page retirement recorded, applied at the next reset"),
    64: (SICK, "row remapping failed"),
    74: (SICK, "NVLink error"),
    79: (SICK, "fell off the bus"),
    92: (WARNING, "high rate of corrected ECC errors"),
    94: (SICK, "contained ECC error"),
    95: (SICK, "uncontained ECC error"),
    119: (SICK, "GSP timed out"),
    120: (SICK, "GSP error"),
}
_READINGS = ("use_mem", "tot_mem", "utilize", "temp")
LOST_REASON = "lost: the GPU stopped answering NVML"
LOST_UNCONFIRMED_REASON = (
    "lost: the node gives no readings for this GPU (it reports no gpu_up to say why)"
)


@dataclass(frozen=True)
class Health:
    state: str = OK
    reasons: tuple[str, ...] = ()

    def document(self) -> dict[str, Any]:
        return {"state": self.state, "reasons": list(self.reasons)}


def _clock(at: float, now: float) -> str:
    """``at`` as this service's local time of day, with the date when it is not today."""
    try:
        moment, today = time.localtime(at), time.localtime(now)
    except (OverflowError, ValueError, OSError):
        return "an unknown time"
    same_day = moment[:3] == today[:3]
    return time.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M", moment)


def _lost(gpu: dict[str, Any], health: GpuHealth | None) -> list[tuple[str, str]]:
    if any(gpu.get(name) is not None for name in _READINGS):
        return []
    if health is None or health.up is None:
        return [(LOST, LOST_UNCONFIRMED_REASON)]
    if not health.up:
        return [(LOST, LOST_REASON)]
    return [(WARNING, "no readings from the GPU, though it still answers NVML")]


def _xid(health: GpuHealth, now: float, recent: float) -> list[tuple[str, str]]:
    code, at = health.last_xid, health.last_xid_at
    if code is None or at is None or code not in XIDS or abs(now - at) > recent:
        return []
    state, meaning = XIDS[code]
    return [(state, f"XID {code} at {_clock(at, now)} ({meaning})")]


def _memory(health: GpuHealth) -> list[tuple[str, str]]:
    found = []
    if health.remap_failure:
        found.append((SICK, "row remapping failed: replace the GPU"))
    if health.remap_pending:
        found.append((WARNING, "memory row remap pending: reset the GPU"))
    if health.retired_pending:
        found.append((WARNING, "memory page retirement pending: reset the GPU"))
    return found


def _pcie(health: GpuHealth, utilization: Any, busy_above: float) -> list[tuple[str, str]]:
    gen, gen_max = health.pcie_generation, health.pcie_generation_max
    width, width_max = health.pcie_width, health.pcie_width_max
    if gen is None or gen_max is None or width is None or width_max is None:
        return []
    busy = isinstance(utilization, (int, float)) and utilization > busy_above
    if not busy or (gen >= gen_max and width >= width_max):
        return []
    return [(WARNING, f"PCIe link at Gen{gen} x{width}, capable of Gen{gen_max} x{width_max}")]


def _mig(health: GpuHealth) -> list[tuple[str, str]]:
    now, pending = health.mig_mode, health.mig_mode_pending
    if now is None or pending is None or now == pending:
        return []
    change = "turns on" if pending else "turns off"
    return [(WARNING, f"MIG mode changes at the next reset ({change})")]


def gpu_health(
    gpu: dict[str, Any],
    health: GpuHealth | None,
    *,
    now: float,
    xid_recent: float,
    busy_above: float,
) -> Health:
    """The health of one GPU (a checked legacy GPU object) from its node's ``/metrics`` health
    (None when the node reported none for it), as of ``now`` by this service's clock."""
    found = _lost(gpu, health)
    if health is not None:
        found += _xid(health, now, xid_recent)
        found += _memory(health)
        found += _pcie(health, gpu.get("utilize"), busy_above)
        found += _mig(health)
    if not found:
        return Health()
    found.sort(key=lambda item: -_RANK[item[0]])  # worst first; stable within a state
    return Health(found[0][0], tuple(reason for _, reason in found))
