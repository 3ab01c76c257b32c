"""Rollout plans and their validation: pure functions of the served state."""

from __future__ import annotations

import pytest

from infra.rollout import plan
from infra.rollout.errors import RolloutError
from infra.rollout.plan import Facts, Step
from infra.rollout.served import Served

SHIPPED = Served(frozenset({1, 2}), {"stable": 2, "canary": 2})
SOUND = Facts(on_disk={1: [], 2: [], 3: []}, available=frozenset({1, 2, 3}))


def targets(steps: list[Step]) -> list[Served]:
    return [step.target for step in steps]


def test_canary_loads_the_version_first_then_moves_the_label():
    steps = plan.canary(SHIPPED, 3, "canary")
    assert targets(steps) == [
        Served(frozenset({1, 2, 3}), {"stable": 2, "canary": 2}),
        Served(frozenset({1, 2, 3}), {"stable": 2, "canary": 3}),
    ]
    assert [s.why for s in steps] == ["load version 3", "point canary at version 3"]
    assert not any(s.drain_first for s in steps)


def test_canary_of_a_loaded_version_is_one_step_and_repeating_it_nothing():
    served = SHIPPED.loading(3)
    assert targets(plan.canary(served, 3, "canary")) == [served.pointing({"canary": 3})]
    assert plan.canary(served.pointing({"canary": 3}), 3, "canary") == []


def test_canary_can_create_a_missing_label():
    served = Served(frozenset({1, 2}), {"stable": 2})
    assert targets(plan.canary(served, 2, "canary")) == [served.pointing({"canary": 2})]


def test_promote_moves_stable_and_keeps_the_old_version_loaded():
    served = Served(frozenset({1, 2, 3}), {"stable": 2, "canary": 3})
    assert targets(plan.promote(served, "stable", "canary")) == [
        Served(frozenset({1, 2, 3}), {"stable": 3, "canary": 3})
    ]
    assert plan.promote(served.pointing({"stable": 3}), "stable", "canary") == []


def test_promote_needs_a_canary():
    with pytest.raises(RolloutError, match="no 'canary' label"):
        plan.promote(Served(frozenset({2}), {"stable": 2}), "stable", "canary")


def test_rollback_moves_the_canary_back_then_drains_and_unloads_the_rejected_version():
    served = Served(frozenset({1, 2, 3}), {"stable": 2, "canary": 3})
    steps = plan.rollback_canary(served, "stable", "canary")
    assert targets(steps) == [
        Served(frozenset({1, 2, 3}), {"stable": 2, "canary": 2}),
        Served(frozenset({1, 2}), {"stable": 2, "canary": 2}),
    ]
    assert [s.drain_first for s in steps] == [False, True]
    assert len(plan.rollback_canary(served, "stable", "canary", keep_loaded=True)) == 1
    assert plan.rollback_canary(SHIPPED, "stable", "canary") == []


def test_rollback_stable_takes_a_canary_that_followed_it_along():
    promoted = Served(frozenset({1, 2, 3}), {"stable": 3, "canary": 3})
    steps = plan.rollback_stable(promoted, 2, "stable", "canary")
    assert targets(steps) == [
        Served(frozenset({1, 2, 3}), {"stable": 2, "canary": 2}),
        Served(frozenset({1, 2}), {"stable": 2, "canary": 2}),
    ]
    assert steps[0].why == "point stable and canary back at version 2"
    assert steps[1].drain_first


def test_rollback_stable_leaves_a_canary_of_another_version_alone():
    served = Served(frozenset({2, 3, 4}), {"stable": 3, "canary": 4})
    assert targets(plan.rollback_stable(served, 2, "stable", "canary")) == [
        Served(frozenset({2, 3, 4}), {"stable": 2, "canary": 4}),
        Served(frozenset({2, 4}), {"stable": 2, "canary": 4}),
    ]


def test_rollback_stable_to_an_unloaded_version_loads_it_first():
    served = Served(frozenset({3}), {"stable": 3, "canary": 3})
    assert [s.why for s in plan.rollback_stable(served, 2, "stable", "canary")] == [
        "load version 2",
        "point stable and canary back at version 2",
        "unload version 3",
    ]


def test_the_previous_version_is_the_newest_sound_one_below_stable():
    served = Served(frozenset({1, 2, 3, 4}), {"stable": 4})
    facts = Facts(
        on_disk={1: [], 2: [], 3: ["no output 'digit'"], 4: [], 5: []}, available=frozenset()
    )
    assert plan.previous_version(served, "stable", facts) == 2
    with pytest.raises(RolloutError, match="no sound version older than 1"):
        plan.previous_version(served.pointing({"stable": 1}), "stable", facts)


def test_every_planned_state_of_a_full_rollout_is_valid_when_the_server_keeps_up():
    state = SHIPPED
    for steps in (
        plan.canary(SHIPPED, 3, "canary"),
        plan.promote(SHIPPED.loading(3).pointing({"canary": 3}), "stable", "canary"),
    ):
        for step in steps:
            assert plan.problems(state, step.target, SOUND) == []
            state = step.target
    assert state == Served(frozenset({1, 2, 3}), {"stable": 3, "canary": 3})


def test_a_label_may_only_move_to_an_available_version():
    target = SHIPPED.loading(3).pointing({"canary": 3})
    facts = Facts(on_disk=SOUND.on_disk, available=frozenset({1, 2}))
    [problem] = plan.problems(SHIPPED.loading(3), target, facts)
    assert "can only move to an AVAILABLE version" in problem


def test_a_label_may_not_point_at_an_unserved_version():
    problems = plan.problems(SHIPPED, SHIPPED.unloading(2), SOUND)
    assert problems == [
        "label 'canary' would point at version 2, which is not served",
        "label 'stable' would point at version 2, which is not served",
    ]


def test_a_new_version_must_be_on_disk_and_meet_the_contract():
    facts = Facts(
        on_disk={1: [], 2: [], 3: ["input 'image' is DT_FLOAT, not DT_UINT8"]},
        available=frozenset({1, 2}),
    )
    assert plan.problems(SHIPPED, SHIPPED.loading(4), facts) == ["version 4 is not on disk"]
    assert plan.problems(SHIPPED, SHIPPED.loading(3), facts) == [
        "version 3 breaks the signature contract: input 'image' is DT_FLOAT, not DT_UINT8"
    ]


def test_serving_nothing_is_refused():
    assert "no version would be served" in plan.problems(
        Served(frozenset({2})), Served(frozenset()), SOUND
    )
