"""Attribution of processes to Slurm jobs, containers and pods from ``/proc/<pid>/cgroup``.

The parsing tests use whole files as the kernel writes them for each layout (cgroup v1, v2 and
hybrid hosts); the reader tests use a /proc tree on disk and the real /proc.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from exporter.attribution import (
    MAX_CGROUP_FILE_BYTES,
    attribution_of_path,
    parse_cgroup_file,
    read_attribution,
)
from exporter.snapshot import Attribution

pytestmark = pytest.mark.unit

CID = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899"
CID2 = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"
POD = "8a3f7c2e-1b2d-4c5e-9f60-7a8b9c0d1e2f"
POD_ = POD.replace("-", "_")
STATIC_POD = "7c1f4b8d0ee8e6e1d2e7c33f3e8b7a94"


def v1_file(paths: dict[str, str], default: str = "/") -> str:
    """A cgroup v1 file as an Ubuntu 20.04 / EL8 host writes it, highest hierarchy first."""
    controllers = [
        "hugetlb", "perf_event", "net_cls,net_prio", "devices", "memory", "cpuset", "pids",
        "blkio", "rdma", "freezer", "cpu,cpuacct", "name=systemd",
    ]  # fmt: skip
    lines = [
        f"{len(controllers) - i}:{name}:{paths.get(name, default)}"
        for i, name in enumerate(controllers)
    ]
    return "\n".join(lines) + "\n"


def hybrid_file(v1: dict[str, str], v2: str, default: str = "/") -> str:
    """A hybrid host: v1 controllers plus the unified hierarchy systemd uses, last."""
    return v1_file(v1, default) + f"0::{v2}\n"


SLURM_V1 = v1_file(
    {
        "devices": "/slurm/uid_1000/job_123456/step_0/task_0",
        "memory": "/slurm/uid_1000/job_123456/step_0/task_0",
        "cpuset": "/slurm/uid_1000/job_123456/step_0",
        "freezer": "/slurm/uid_1000/job_123456/step_0",
        "pids": "/system.slice/slurmd.service",
        "cpu,cpuacct": "/system.slice/slurmd.service",
        "name=systemd": "/system.slice/slurmd.service",
    }
)

CASES = {
    # -- Slurm -----------------------------------------------------------------------------
    "slurm v1 numbered step": (SLURM_V1, Attribution(slurm_job="123456")),
    "slurm v1 batch step, freezer only": (
        v1_file({"freezer": "/slurm/uid_5012/job_9/step_batch"}),
        Attribution(slurm_job="9"),
    ),
    "slurm v1 extern step": (
        v1_file(
            {
                "memory": "/slurm/uid_0/job_4294967295/step_extern/task_0",
                "freezer": "/slurm/uid_0/job_4294967295/step_extern",
            }
        ),
        Attribution(slurm_job="4294967295"),
    ),
    "slurm v1 several slurmd per host": (
        v1_file({"devices": "/slurm_gpu-node07/uid_1000/job_77/step_interactive"}),
        Attribution(slurm_job="77"),
    ),
    "slurm v2 numbered step": (
        "0::/system.slice/slurmstepd.scope/job_123457/step_0/user/task_0\n",
        Attribution(slurm_job="123457"),
    ),
    "slurm v2 task below step": (
        "0::/system.slice/slurmstepd.scope/job_31/step_12/user/task_3\n",
        Attribution(slurm_job="31"),
    ),
    "slurm v2 batch step": (
        "0::/system.slice/slurmstepd.scope/job_88/step_batch/user/task_0\n",
        Attribution(slurm_job="88"),
    ),
    "slurm v2 extern step (pam_slurm_adopt)": (
        "0::/system.slice/slurmstepd.scope/job_88/step_extern/user/task_special\n",
        Attribution(slurm_job="88"),
    ),
    "slurm v2 interactive step": (
        "0::/system.slice/slurmstepd.scope/job_90/step_interactive/user/task_0\n",
        Attribution(slurm_job="90"),
    ),
    "slurm v2 slurmstepd itself": (
        "0::/system.slice/slurmstepd.scope/job_90/step_0/slurm\n",
        Attribution(slurm_job="90"),
    ),
    "slurm v2 several slurmd per host": (
        "0::/system.slice/node-a07_slurmstepd.scope/job_5/step_0/user/task_0\n",
        Attribution(slurm_job="5"),
    ),
    "slurm v2 stepd outside any job": ("0::/system.slice/slurmstepd.scope/system\n", Attribution()),
    "slurm v2 in a Kubernetes pod": (
        f"0::/kubepods.slice/kubepods-pod{POD_}.slice/cri-containerd-{CID}.scope"
        "/system.slice/slurmstepd.scope/job_61/step_0/user/task_0\n",
        Attribution(slurm_job="61", container=CID[:12], pod_uid=POD),
    ),
    # -- Kubernetes ------------------------------------------------------------------------
    "k8s cgroupfs v1 burstable containerd": (
        v1_file({}, default=f"/kubepods/burstable/pod{POD}/{CID}"),
        Attribution(container=CID[:12], pod_uid=POD),
    ),
    "k8s cgroupfs v1 besteffort": (
        v1_file({}, default=f"/kubepods/besteffort/pod{POD}/{CID}"),
        Attribution(container=CID[:12], pod_uid=POD),
    ),
    "k8s cgroupfs guaranteed (no qos level)": (
        f"0::/kubepods/pod{POD}/{CID}\n",
        Attribution(container=CID[:12], pod_uid=POD),
    ),
    "k8s cgroupfs cri-o": (
        f"0::/kubepods/burstable/pod{POD}/crio-{CID}\n",
        Attribution(container=CID[:12], pod_uid=POD),
    ),
    "k8s cgroupfs static pod": (
        f"0::/kubepods/burstable/pod{STATIC_POD}/{CID}\n",
        Attribution(container=CID[:12], pod_uid=STATIC_POD),
    ),
    "k8s systemd v2 burstable containerd": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/"
        f"cri-containerd-{CID}.scope\n",
        Attribution(container=CID[:12], pod_uid=POD),
    ),
    "k8s systemd v2 besteffort cri-o": (
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_}.slice/"
        f"crio-{CID}.scope\n",
        Attribution(container=CID[:12], pod_uid=POD),
    ),
    "k8s systemd v2 cri-o payload below the scope": (
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_}.slice/"
        f"crio-{CID}.scope/container\n",
        Attribution(container=CID[:12], pod_uid=POD),
    ),
    "k8s systemd guaranteed docker": (
        f"0::/kubepods.slice/kubepods-pod{POD_}.slice/docker-{CID}.scope\n",
        Attribution(container=CID[:12], pod_uid=POD),
    ),
    "k8s systemd v1 hybrid": (
        hybrid_file(
            {},
            default=f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/cri-containerd-{CID}.scope",
            v2=f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/cri-containerd-{CID}.scope",
        ),
        Attribution(container=CID[:12], pod_uid=POD),
    ),
    "k8s kind node (kubelet below its own slice)": (
        f"0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{POD_}.slice/cri-containerd-{CID}.scope\n",
        Attribution(container=CID[:12], pod_uid=POD),
    ),
    "k8s pod-level cgroup, no container": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice\n",
        Attribution(pod_uid=POD),
    ),
    "k8s conmon is not in the container": (
        f"0::/kubepods.slice/kubepods-pod{POD_}.slice/crio-conmon-{CID}.scope\n",
        Attribution(pod_uid=POD),
    ),
    "k8s seen from a foreign cgroup namespace": (
        f"0::/../../kubepods.slice/kubepods-pod{POD_}.slice/cri-containerd-{CID}.scope\n",
        Attribution(container=CID[:12], pod_uid=POD),
    ),
    # -- containers outside Kubernetes -----------------------------------------------------
    "docker cgroupfs v1": (v1_file({}, default=f"/docker/{CID}"), Attribution(container=CID[:12])),
    "docker cgroupfs v2": (f"0::/docker/{CID}\n", Attribution(container=CID[:12])),
    "docker systemd v2": (
        f"0::/system.slice/docker-{CID}.scope\n",
        Attribution(container=CID[:12]),
    ),
    "docker systemd hybrid": (
        hybrid_file(
            {}, default=f"/system.slice/docker-{CID}.scope", v2=f"/system.slice/docker-{CID}.scope"
        ),
        Attribution(container=CID[:12]),
    ),
    "docker in docker: the outer one": (
        f"0::/docker/{CID}/docker/{CID2}\n",
        Attribution(container=CID[:12]),
    ),
    "rootless docker": (
        f"0::/user.slice/user-1000.slice/user@1000.service/docker-{CID}.scope\n",
        Attribution(container=CID[:12]),
    ),
    "podman rootful": (
        f"0::/machine.slice/libpod-{CID}.scope/container\n",
        Attribution(container=CID[:12]),
    ),
    "podman rootless": (
        f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/container\n",
        Attribution(container=CID[:12]),
    ),
    "podman cgroupfs v1": (
        v1_file({}, default=f"/libpod_parent/libpod-{CID}"),
        Attribution(container=CID[:12]),
    ),
    "podman conmon": (f"0::/machine.slice/libpod-conmon-{CID}.scope\n", Attribution()),
    "containerd systemd (cri-containerd outside a pod)": (
        f"0::/system.slice/cri-containerd-{CID}.scope\n",
        Attribution(container=CID[:12]),
    ),
    "containerd namespace, cgroupfs": (f"0::/default/{CID}\n", Attribution(container=CID[:12])),
    "containerd k8s.io namespace, cgroupfs v1": (
        v1_file({}, default=f"/k8s.io/{CID}"),
        Attribution(container=CID[:12]),
    ),
    "nerdctl systemd": (f"0::/system.slice/nerdctl-{CID}.scope\n", Attribution(container=CID[:12])),
    # -- nothing to name -------------------------------------------------------------------
    "plain v2 session": ("0::/user.slice/user-1000.slice/session-3.scope\n", Attribution()),
    "plain v1 host": (v1_file({"name=systemd": "/system.slice/sshd.service"}), Attribution()),
    "root cgroup": ("0::/\n", Attribution()),
}


@pytest.mark.parametrize("content, expected", list(CASES.values()), ids=list(CASES))
def test_parse_real_files(content: str, expected: Attribution) -> None:
    assert parse_cgroup_file(content) == expected
    assert parse_cgroup_file(content.encode()) == expected


def test_hybrid_prefers_the_v2_line_when_it_names_something() -> None:
    content = hybrid_file(
        {"freezer": "/slurm/uid_1000/job_11/step_0"},
        v2="/system.slice/slurmstepd.scope/job_22/step_0/user/task_0",
    )
    assert parse_cgroup_file(content) == Attribution(slurm_job="22")


def test_hybrid_falls_back_to_the_first_v1_line_that_names_something() -> None:
    content = hybrid_file(
        {
            "devices": "/slurm/uid_1000/job_11/step_0",
            "freezer": "/slurm/uid_1000/job_12/step_0",
        },
        v2="/system.slice/slurmd.service",
    )
    assert parse_cgroup_file(content) == Attribution(slurm_job="11")


def test_hybrid_slurm_v1_with_systemd_v2() -> None:
    """Slurm's cgroup/v1 plugin on a host whose systemd mounts the unified hierarchy too."""
    content = hybrid_file({"memory": "/slurm/uid_1/job_3/step_0"}, v2="/")
    assert parse_cgroup_file(content) == Attribution(slurm_job="3")


def test_lines_are_not_merged() -> None:
    """A job from one line and a container from another would be a view no process has."""
    content = hybrid_file({"freezer": "/slurm/uid_1/job_3/step_0"}, v2=f"/docker/{CID}")
    assert parse_cgroup_file(content) == Attribution(container=CID[:12])


@pytest.mark.parametrize(
    "path",
    [
        "/user.slice/user-1000.slice/user@1000.service/app.slice/slurmstepd.scope/job_9/step_0",
        "/user.slice/user-1000.slice/user@1000.service/slurm/uid_0/job_9/step_0",
        f"/user.slice/user-1000.slice/user@1000.service/kubepods/pod{POD}/{CID}",
        f"/user.slice/user-1000.slice/user@1000.service/kubepods-pod{POD_}.slice",
    ],
)
def test_no_job_or_pod_is_believed_from_a_users_delegated_subtree(path: str) -> None:
    found = attribution_of_path(path)
    assert found.slurm_job == "" and found.pod_uid == ""


GARBAGE = {
    "empty": "",
    "binary": bytes(range(256)) * 4,
    "no colons": "this is not a cgroup file\n",
    "job id not digits": "0::/system.slice/slurmstepd.scope/job_12a/step_0\n",
    "job id of unicode digits": "0::/system.slice/slurmstepd.scope/job_\u0663\u0664/step_0\n",
    "job id too long": "0::/system.slice/slurmstepd.scope/job_12345678901/step_0\n",
    "job outside the stepd scope": "0::/system.slice/job_12/step_0\n",
    "v1 job without uid": "4:memory:/slurm/job_12/step_0\n",
    "v1 uid not digits": "4:memory:/slurm/uid_root/job_12/step_0\n",
    "pod uid too short": f"0::/kubepods/burstable/pod{POD[:-1]}/runc\n",
    "pod uid upper case": f"0::/kubepods/burstable/pod{POD.upper()}/runc\n",
    "systemd pod uid with dashes": f"0::/kubepods.slice/kubepods-pod{POD}.slice\n",
    "pod outside kubepods": f"0::/system.slice/pod{POD}/x\n",
    "container id 63 hex": f"0::/docker/{CID[:-1]}\n",
    "container id 65 hex": f"0::/docker/{CID}0\n",
    "container id upper case": f"0::/docker/{CID.upper()}\n",
    "container id not hex": "0::/docker/" + "g" * 64 + "\n",
    "relative path": f"0::docker/{CID}\n",
    "hierarchy not a number": f"x::/docker/{CID}\n",
    "hierarchy unicode digit": f"\u0663::/docker/{CID}\n",
    "nul bytes": f"0::/docker/{CID}\x00/x\n",
    "carriage return after the id": f"0::/docker/{CID}\r\n",
    "line too long": "0::/" + "a/" * 3000 + f"docker/{CID}\n",
    "file too large": "0::/\n" * (MAX_CGROUP_FILE_BYTES // 4) + f"0::/docker/{CID}\n",
    "too many lines": "1:cpu:/\n" * 100 + f"0::/docker/{CID}\n",
}


@pytest.mark.parametrize("content", list(GARBAGE.values()), ids=list(GARBAGE))
def test_garbage_names_nothing_and_never_raises(content: str | bytes) -> None:
    assert parse_cgroup_file(content) == Attribution()


def test_a_bad_pod_uid_does_not_hide_the_container() -> None:
    content = f"0::/kubepods/burstable/pod{POD[:-1]}/{CID}\n"
    assert parse_cgroup_file(content) == Attribution(container=CID[:12])


def test_wrong_types_never_raise() -> None:
    assert parse_cgroup_file(None) == Attribution()  # type: ignore[arg-type]
    assert parse_cgroup_file(12) == Attribution()  # type: ignore[arg-type]


def test_empty_attribution_is_false() -> None:
    assert not Attribution()
    assert Attribution(container=CID[:12])


# -- the reader ------------------------------------------------------------------------------


def fake_proc(root: Path, pid: int, cgroup: str, *, start: int = 1000, comm: str = "sleep") -> None:
    """One process directory: ``stat`` (start time in field 22) and ``cgroup``."""
    directory = root / str(pid)
    directory.mkdir(parents=True, exist_ok=True)
    fields = ["S"] + ["0"] * 18 + [str(start)] + ["0"] * 10
    (directory / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
    (directory / "cgroup").write_text(cgroup)


def test_reader_reads_a_proc_root_mounted_elsewhere(tmp_path: Path) -> None:
    fake_proc(tmp_path, 100, SLURM_V1)
    fake_proc(tmp_path, 200, f"0::/system.slice/docker-{CID}.scope\n", comm="a) (b c")
    assert read_attribution(100, proc_root=tmp_path) == Attribution(slurm_job="123456")
    assert read_attribution(200, proc_root=tmp_path) == Attribution(container=CID[:12])
    assert read_attribution(300, proc_root=tmp_path) == Attribution()  # vanished


def test_uncached_read(tmp_path: Path) -> None:
    fake_proc(tmp_path, 100, f"0::/docker/{CID}\n")
    assert read_attribution(100, proc_root=tmp_path) == Attribution(container=CID[:12])
    (tmp_path / "100" / "cgroup").write_text(f"0::/docker/{CID2}\n")
    assert read_attribution(100, proc_root=tmp_path) == Attribution(container=CID2[:12])
    assert read_attribution(101, proc_root=tmp_path) == Attribution()
    assert read_attribution(-5, proc_root=tmp_path) == Attribution()
    assert read_attribution(os.getpid()) == parse_cgroup_file(
        Path(f"/proc/{os.getpid()}/cgroup").read_bytes()
    )


@pytest.mark.parametrize("pid", [0, -1, True, "1"])
def test_reader_rejects_impossible_pids(tmp_path: Path, pid: object) -> None:
    assert read_attribution(pid, proc_root=tmp_path) == Attribution()  # type: ignore[arg-type]


def test_reader_on_the_real_proc() -> None:
    """This very process and a child: whatever cgroup they are in, the reader answers."""
    expected = parse_cgroup_file(Path(f"/proc/{os.getpid()}/cgroup").read_bytes())
    assert read_attribution(os.getpid()) == expected
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert read_attribution(child.pid) == parse_cgroup_file(
            Path(f"/proc/{child.pid}/cgroup").read_bytes()
        )
    finally:
        child.kill()
        child.wait()
    assert read_attribution(child.pid) == Attribution()
