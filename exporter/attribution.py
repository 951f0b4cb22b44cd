"""Which Slurm job, container and Kubernetes pod a process belongs to, from its cgroup.

``/proc/<pid>/cgroup`` has one line per hierarchy: ``N:controllers:/path`` for cgroup v1 and
``0::/path`` for the unified (v2) hierarchy; hybrid hosts list both. The path names the job,
pod or container that Slurm, the kubelet or a container runtime created for the process:

==========================  =====================================================================
Slurm, cgroup v1            ``/slurm/uid_<uid>/job_<id>/step_<step>/task_<n>`` (``slurm_<node>``
                            with several slurmd per host)
Slurm, cgroup v2            ``/system.slice/slurmstepd.scope/job_<id>/step_<step>/user/task_<n>``
                            (``<node>_slurmstepd.scope`` with several slurmd per host)
Kubernetes, cgroupfs        ``/kubepods[/burstable|/besteffort]/pod<uid>/[crio-]<container id>``
Kubernetes, systemd         ``/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _>
                            .slice/<runtime>-<container id>.scope`` (no qos level: guaranteed)
Containers                  ``/docker/<id>``, ``/<containerd namespace>/<id>``,
                            ``.../<runtime>-<id>.scope`` (docker, libpod, cri-containerd, crio,
                            nerdctl, ...; also below ``user.slice`` for rootless runtimes)
==========================  =====================================================================

Each path is searched from its root, one component at a time, so prefixes (a kubelet or Slurm
nested under another slice or in a container, ``/..`` components of a foreign cgroup namespace)
do not matter. Slurm and Kubernetes names below a ``user.slice`` component are ignored: that is
systemd's delegated subtree, where any user names cgroups freely and could claim someone else's
job; rootless containers do live there, so container ids are still read. Container ids are 64
hex digits, cut to the 12 that ``docker ps`` shows; the first (outermost) container wins, which
is the one the host's runtime knows. Monitor processes (``*-conmon-<id>``) belong to no
container.

Precedence on hybrid hosts: the v2 line when it names anything (it is the hierarchy systemd, and
so Slurm's and the runtimes' systemd drivers, use there), else the first v1 line that does. The
lines are never merged: one line is one consistent view.

The content is untrusted (any user names their own cgroups under a delegated subtree): sizes are
bounded, ids must match their exact character sets, and parsing never raises.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from exporter.snapshot import NO_ATTRIBUTION, Attribution

log = logging.getLogger(__name__)

DEFAULT_PROC_ROOT = "/proc"

# Real files are a few hundred bytes; a cgroup path is at most PATH_MAX per line.
MAX_CGROUP_FILE_BYTES = 64 * 1024
MAX_LINE_LENGTH = 4096
MAX_LINES = 64

SHORT_CONTAINER_ID_LENGTH = 12

_JOB = re.compile(r"job_([0-9]{1,10})")
_V1_SLURM_ROOT = re.compile(r"slurm(?:_[A-Za-z0-9._-]{1,64})?")
_V1_UID = re.compile(r"uid_[0-9]{1,10}")
_V2_SLURM_SCOPE = re.compile(r"(?:[A-Za-z0-9._-]{1,64}_)?slurmstepd\.scope")

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID_SYSTEMD = r"[0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12}"  # "-" is "/" there
_STATIC_POD_UID = r"[0-9a-f]{32}"  # mirror pods: the hash of the manifest, no dashes
_POD_CGROUPFS = re.compile(rf"pod({_UUID}|{_STATIC_POD_UID})")
_POD_SYSTEMD = re.compile(
    rf"(?:[A-Za-z0-9_]{{1,64}}-){{0,4}}kubepods(?:-burstable|-besteffort)?"
    rf"-pod({_UUID_SYSTEMD}|{_STATIC_POD_UID})\.slice"
)
_CONTAINER = re.compile(r"(?:([a-z0-9][a-z0-9._-]{0,63})-)?([0-9a-f]{64})(?:\.scope)?")


def _slurm_job(parts: list[str]) -> str:
    """The job id when ``parts`` hold a Slurm job cgroup (v1 or v2 layout), else ``""``."""
    for i, part in enumerate(parts):
        if _V2_SLURM_SCOPE.fullmatch(part):
            following = parts[i + 1 : i + 2]
        elif (
            _V1_SLURM_ROOT.fullmatch(part)
            and i + 1 < len(parts)
            and _V1_UID.fullmatch(parts[i + 1])
        ):
            following = parts[i + 2 : i + 3]
        else:
            continue
        match = _JOB.fullmatch(following[0]) if following else None
        if match:
            return match.group(1)
    return ""


def _container_id(part: str) -> str:
    """The short container id a path component names, or ``""``."""
    match = _CONTAINER.fullmatch(part)
    if match is None:
        return ""
    prefix = match.group(1) or ""
    if prefix == "conmon" or prefix.endswith("-conmon"):
        return ""
    return match.group(2)[:SHORT_CONTAINER_ID_LENGTH]


def _pod(parts: list[str]) -> tuple[str, str]:
    """(pod uid, short container id) when ``parts`` hold a Kubernetes pod cgroup."""
    for i, part in enumerate(parts):
        match = _POD_SYSTEMD.fullmatch(part)
        if match:
            uid = match.group(1).replace("_", "-")
        else:
            match = _POD_CGROUPFS.fullmatch(part)
            # a bare "pod<uid>" is only a pod below the kubelet's "kubepods" root
            if match is None or "kubepods" not in parts[:i]:
                continue
            uid = match.group(1)
        following = parts[i + 1 : i + 2]
        return uid, _container_id(following[0]) if following else ""
    return "", ""


def attribution_of_path(path: str) -> Attribution:
    """The attribution one cgroup path names (empty when it names nothing)."""
    if len(path) > MAX_LINE_LENGTH or not path.startswith("/"):
        return NO_ATTRIBUTION
    parts = [part for part in path.split("/") if part and part not in (".", "..")]
    # below user.slice any user may create cgroups: no job or pod is believed from there
    trusted = parts[: parts.index("user.slice")] if "user.slice" in parts else parts
    slurm_job = _slurm_job(trusted)
    pod_uid, container = _pod(trusted)
    if not pod_uid:
        container = next((c for c in map(_container_id, parts) if c), "")
    if not (slurm_job or pod_uid or container):
        return NO_ATTRIBUTION
    return Attribution(slurm_job=slurm_job, container=container, pod_uid=pod_uid)


def parse_cgroup_file(content: str | bytes) -> Attribution:
    """The attribution of a process from the text of its ``/proc/<pid>/cgroup``; never raises.

    Malformed lines are skipped; too large a file names nothing.
    """
    try:
        return _parse(content)
    except Exception:  # untrusted input must never take the caller down
        log.debug("unparseable cgroup file", exc_info=True)
        return NO_ATTRIBUTION


def _parse(content: str | bytes) -> Attribution:
    if len(content) > MAX_CGROUP_FILE_BYTES:
        return NO_ATTRIBUTION
    if isinstance(content, bytes):
        # ids are ASCII; anything else in a path only has to survive being skipped
        content = content.decode("ascii", errors="replace")
    first_v1 = NO_ATTRIBUTION
    for number, line in enumerate(content.split("\n")):
        if number >= MAX_LINES:
            break
        fields = line.split(":", 2)
        if len(fields) != 3 or not fields[0].isascii() or not fields[0].isdigit():
            continue
        hierarchy, controllers, path = fields
        found = attribution_of_path(path)
        if hierarchy == "0" and controllers == "":
            if found:
                return found  # the unified hierarchy wins on hybrid hosts
        elif found and not first_v1:
            first_v1 = found
    return first_v1


def _read_small(path: Path, limit: int) -> bytes:
    with path.open("rb") as handle:
        return handle.read(limit + 1)


def read_cgroup_file(pid: int, *, proc_root: str | os.PathLike[str] = DEFAULT_PROC_ROOT) -> bytes:
    """The raw ``/proc/<pid>/cgroup`` (at most one byte over the parse limit). Raises OSError."""
    return _read_small(Path(proc_root, str(pid), "cgroup"), MAX_CGROUP_FILE_BYTES)


def read_attribution(
    pid: int, *, proc_root: str | os.PathLike[str] = DEFAULT_PROC_ROOT
) -> Attribution:
    """The attribution of ``pid`` read now, uncached; empty when it exited or is unreadable.

    For callers that already cache per process, such as
    :class:`exporter.processes.ProcessResolver` on a cache miss. Never raises.
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return NO_ATTRIBUTION
    try:
        content = read_cgroup_file(pid, proc_root=proc_root)
    except (OSError, ValueError):
        return NO_ATTRIBUTION
    return parse_cgroup_file(content)
