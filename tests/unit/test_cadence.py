"""Which queries a PromQL round asks: every family each round, but the /metrics families every
--power-interval and the hardware's every minute, and both at once for a node newly up."""

from __future__ import annotations

import pytest

from status_api.promsource import METRICS, SLOW, Cadence, queries

pytestmark = pytest.mark.unit

EVERY_ROUND = frozenset(queries("gpu")) - SLOW - METRICS


def answered(names: frozenset[str], mark: str) -> dict[str, list]:
    return {name: [({"__name__": mark}, 1.0)] for name in names}


def test_the_tiers_split_the_queries_and_gpu_up_is_read_every_round() -> None:
    assert SLOW and METRICS and not SLOW & METRICS
    assert {"up", "scraped", "health/gpu_up", "gpu/gpu_memory_used_bytes"} <= EVERY_ROUND
    assert {"gpu/gpu_info", "node/gpu_node_info"} <= SLOW
    assert {"gpu/gpu_power_watts", "health/memory_flags"} <= METRICS


def test_a_tier_is_asked_when_due_and_its_last_answers_fill_the_rounds_between() -> None:
    cadence = Cadence(metrics_every=10, slow_every=60)
    assert cadence.due(0.0) == frozenset()  # nothing asked yet: everything is due
    first = answered(frozenset(queries("gpu")), "first")
    cadence.remember(first, {"a:1"}, 0.0)
    assert cadence.due(5.0) == SLOW | METRICS
    between = answered(EVERY_ROUND, "between")
    cadence.remember(between, {"a:1"}, 5.0)
    assert between.keys() == first.keys()
    assert all(between[name] == first[name] for name in SLOW | METRICS)
    assert cadence.due(10.0) == SLOW  # the /metrics tier again, the hardware's not yet
    cadence.remember(answered(EVERY_ROUND | METRICS, "second"), {"a:1"}, 10.0)
    assert cadence.due(19.0) == SLOW | METRICS
    assert cadence.due(60.0) == frozenset()


def test_a_node_up_now_that_a_tier_does_not_know_makes_it_late() -> None:
    cadence = Cadence(metrics_every=10, slow_every=60)
    cadence.remember(answered(frozenset(queries("gpu")), "first"), {"a:1"}, 0.0)
    skipped = cadence.due(3.0)
    assert cadence.late(skipped, {"a:1"}) == frozenset()
    assert cadence.late(skipped, {"a:1", "b:1"}) == SLOW | METRICS
    # A node that went away is no reason to ask again.
    assert cadence.late(skipped, set()) == frozenset()


def test_power_interval_zero_asks_every_round_and_negative_never() -> None:
    every_round = Cadence(metrics_every=0)
    every_round.remember(answered(frozenset(queries("gpu")), "x"), {"a:1"}, 0.0)
    assert every_round.due(0.5) == SLOW
    never = Cadence(metrics_every=-1)
    assert never.due(0.0) == METRICS
    answers = answered(EVERY_ROUND | SLOW, "x")
    never.remember(answers, {"a:1"}, 0.0)
    assert all(answers[name] == [] for name in METRICS)
    assert never.late(never.due(1.0), {"a:1", "b:1"}) == SLOW  # never: not even late


def _sample(family: str, value: float, gpu: str = "0", **labels: str) -> tuple[dict, float]:
    return {"__name__": family, "instance": "a:1", "gpu": gpu, **labels}, value


def test_readings_of_reused_answers_are_kept_and_joined_with_this_rounds() -> None:
    from status_api.promsource import ReusedReadings, build_results

    info = _sample("gpu_process_info", 1, pid="7", slurm_job="9")
    tiered = {  # one answer list per family, as Cadence keeps them between times
        "sm": [_sample("gpu_process_sm_utilization_ratio", 0.5, pid="7"),
               _sample("gpu_process_sm_utilization_ratio", 0.25, pid="8")],
        "flags": [_sample("gpu_remapped_rows_pending", 1, gpu="1")],
        "mig": [_sample("gpu_mig_info", 1, mig_uuid="MIG-1", gi="1", ci="0", profile="1g")],
    }  # fmt: skip
    reused = ReusedReadings()

    def round_(gpu_up: list, flags: list) -> list:
        answers = {
            "up": [({"instance": "a:1", "node": "a"}, 1.0)], "scraped": [], "node": [],
            "gpu": [_sample("gpu_memory_used_bytes", 2**20, gpu=g) for g in "01"],
            "process": [],
            "attribution": [info, *tiered["sm"]],
            "health": [*gpu_up, *flags, *tiered["mig"]],
        }  # fmt: skip
        plain = build_results(answers, stale_after=60)[1]
        kept = build_results(answers, stale_after=60, reused=reused)[1]
        assert [(r.processes, r.health, r.migs) for r in kept] == [
            (r.processes, r.health, r.migs) for r in plain
        ]
        return kept

    first = round_([], tiered["flags"])
    assert first[0].processes[(0, 7)].sm_utilization == 0.5
    assert first[0].health[1].remap_pending and first[0].health[1].up is None
    lost = round_([_sample("gpu_up", 0, gpu="1")], tiered["flags"])  # kept answers, new gpu_up
    assert lost[0].health[1].up is False and lost[0].health[1].remap_pending
    assert first[0].health[1].up is None  # the kept reading is shared, never changed
    cleared = round_([], [])  # the tier asked again: read again
    assert 1 not in cleared[0].health and cleared[0].migs[0][0].profile == "1g"
