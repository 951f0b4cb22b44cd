"""The "Energy" row: GPU power over time and who used how many kWh over the selected range.

The energy figures are the counters of ``prometheus/rules/energy.yml``, which split each GPU's
energy counter among the processes holding it (by their SM utilization, evenly where there is
none; the idle power of a held GPU counts against its holder) and give the energy of GPUs
nobody held to the cluster. Joules over the range divided by 3.6e6 are kWh.
"""

from __future__ import annotations

from .panels import NODE, Panel, bar_gauge, stat, target, thresholds, timeseries, unknown_user

JOULES_PER_KWH = "3.6e6"
SPLIT_RULE = (
    " A GPU's energy goes to the processes holding it, by their SM utilization (evenly where "
    "the GPU reports none); the idle power of a held GPU counts against its holder. From the "
    "counters of rules/energy.yml, whole cluster, not filtered by node."
)


def kwh(counter: str) -> str:
    return f"increase({counter}[$__range]) / {JOULES_PER_KWH}"


def energy_row() -> list[Panel]:
    return [
        timeseries(
            "Power per node",
            "Power drawn by the GPUs of each selected node, stacked: the top line is the "
            "selection's total.",
            [target(f"sum by (node) (node:gpu_power_watts:sum{{{NODE}}})", "{{node}}")],
            "watt",
            minimum=0,
            stack=True,
            width=12,
        ),
        timeseries(
            "Power of GPUs nobody holds",
            "Mean power over each interval of all GPUs, and of the GPUs no process held (their "
            "energy is charged to no user): what free GPUs cost the cluster. Whole cluster, "
            "from the energy counters of rules/energy.yml.",
            [
                target(
                    "rate(cluster:gpu_energy_joules:total[$__rate_interval])",
                    "all GPUs",
                ),
                target(
                    "rate(cluster:gpu_unheld_energy_joules:total[$__rate_interval])",
                    "held by nobody",
                    ref="B",
                ),
            ],
            "watt",
            minimum=0,
            width=12,
        ),
        stat(
            "Energy in the selected range",
            "Energy of every GPU of the cluster over the dashboard's time range, and the part "
            "used while no process held the GPU (counted against nobody). The users' energy "
            "and the unheld energy add up to the total.",
            [
                target(kwh("cluster:gpu_energy_joules:total"), "all GPUs", instant=True),
                target(
                    kwh("cluster:gpu_unheld_energy_joules:total"),
                    "held by nobody",
                    ref="B",
                    instant=True,
                ),
            ],
            "kwatth",
            steps=thresholds((None, "blue")),
            decimals=2,
            width=6,
        ),
        bar_gauge(
            "Energy per user in the selected range",
            "kWh charged to each user over the dashboard's time range." + SPLIT_RULE,
            [
                target(
                    "sort_desc("
                    + unknown_user(kwh('user:gpu_energy_joules:total{user=~"$user"}'))
                    + ")",
                    "{{user}}",
                    instant=True,
                )
            ],
            "kwatth",
            width=6,
        ),
        bar_gauge(
            "Energy per Slurm job in the selected range",
            "kWh charged to each Slurm job over the dashboard's time range (processes outside "
            "any job left out)." + SPLIT_RULE,
            [
                target(
                    f"sort_desc({kwh('slurm_job:gpu_energy_joules:total')})",
                    "job {{slurm_job}}",
                    instant=True,
                )
            ],
            "kwatth",
            width=6,
        ),
        bar_gauge(
            "Energy per namespace in the selected range",
            "kWh charged to each Kubernetes namespace over the dashboard's time range "
            "(processes outside any pod left out)." + SPLIT_RULE,
            [
                target(
                    f"sort_desc({kwh('namespace:gpu_energy_joules:total')})",
                    "{{namespace}}",
                    instant=True,
                )
            ],
            "kwatth",
            width=6,
        ),
    ]
