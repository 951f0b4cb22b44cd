"""The one-command demo: a small GPU cluster, simulated on a machine without a GPU.

Run it from the repository root as ``python -m simulator.demo`` (``make demo`` sets up the
environment first). The pieces, each started here and stopped here:

* **The fake NVML library** (``simulator/fakenvml``), built into ``build/fakenvml``: every exporter
  loads it instead of the driver's ``libnvidia-ml.so.1`` and serves the GPUs of its own scenario
  file, which the library re-reads whenever it changes.
* **Three simulated nodes** (:mod:`simulator.demo.nodes`), one ``gpu-exporter`` process each, on
  their own loopback address and port with their own ``--hostname``: ``dgx-a`` with eight busy
  GPUs; ``dgx-b`` with four mixed ones (busy, hot and throttled, held by a process but idle,
  free); ``ws-c``, a workstation with two consumer GPUs that do not report every field, one of
  them lost.
* **Jobs** (:mod:`simulator.demo.jobs`): real processes (a tiny C program that sleeps, with
  command lines such as ``python train.py ...``) whose pids the scenarios list, so the exporters
  resolve real users and commands. Run as root, they run as several system accounts; otherwise
  as the current user.
* **Drift** (:mod:`simulator.demo.drift`): a thread that rewrites the scenarios every few
  seconds: utilisation, temperature and power wander, jobs end and new ones start.
* **Services** (:mod:`simulator.demo.services`): gpu-status-api polling the three exporters,
  with a password shared through a file, and Prometheus with the project's configuration and
  rules, when the ``prometheus`` binary is installed; its targets come from
  ``gpu-status-api targets``.

:mod:`simulator.demo.runner` starts them all in one temporary directory. Ctrl-C, SIGTERM or the
end of ``--duration`` stops every process started here (each in its own process group) and
removes the directory.
"""

from __future__ import annotations

from simulator.demo.common import DemoError
from simulator.demo.jobs import JobUser, job_users

__all__ = ["DemoError", "JobUser", "job_users"]
