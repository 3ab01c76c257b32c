"""Applying plans: validate, write, wait for the server -- against a scripted model server."""

from __future__ import annotations

import pytest

from infra.rollout import plan
from infra.rollout.cli import Deployment
from infra.rollout.errors import RolloutError
from infra.rollout.served import Served, parse, served_of


def served(deployment: Deployment) -> Served:
    return served_of(parse(deployment.config_file.read_text()), "mnist")


def test_a_canary_is_written_in_two_steps_the_server_sees_in_order(deployment):
    deployment.apply(plan.canary(served(deployment), 3, "canary"))
    assert deployment.server.seen == [
        Served(frozenset({1, 2}), {"stable": 2, "canary": 2}),
        Served(frozenset({1, 2, 3}), {"stable": 2, "canary": 2}),
        Served(frozenset({1, 2, 3}), {"stable": 2, "canary": 3}),
    ]
    assert deployment.config_file.read_text().startswith("# TensorFlow Serving ModelServerConfig")


def test_a_version_that_is_not_on_disk_is_refused_and_nothing_is_written(deployment):
    before = deployment.config_file.read_text()
    with pytest.raises(RolloutError, match="refused, nothing written: version 4 is not on disk"):
        deployment.apply(plan.canary(served(deployment), 4, "canary"))
    assert deployment.config_file.read_text() == before


def test_a_version_without_the_contract_signature_is_refused(deployment):
    pb = deployment.models_dir / "mnist" / "3" / "saved_model.pb"
    pb.write_bytes(pb.read_bytes().replace(b"probabilities", b"probabilitiez"))
    with pytest.raises(RolloutError, match="version 3 breaks the signature contract"):
        deployment.apply(plan.canary(served(deployment), 3, "canary"))


def test_a_version_that_fails_to_load_stops_the_rollout_before_any_label_moves(deployment):
    deployment.server.broken = frozenset({3})
    with pytest.raises(RolloutError, match="version 3 is END on the model server"):
        deployment.apply(plan.canary(served(deployment), 3, "canary"))
    assert served(deployment).labels == {"stable": 2, "canary": 2}


def test_a_config_changed_by_someone_else_mid_rollout_stops_it(deployment):
    def meddle(message: str) -> None:
        if message.startswith("step 2/"):
            text = deployment.config_file.read_text().replace("value: 2", "value: 1")
            deployment.config_file.write_text(text)

    deployment.say = meddle
    with pytest.raises(RolloutError, match="changed during the rollout"):
        deployment.apply(plan.canary(served(deployment), 3, "canary"))


def test_a_full_cycle_ends_where_it_started_plus_nothing(deployment):
    messages: list[str] = []
    deployment.say = messages.append
    deployment.drain_seconds = 0.01
    deployment.apply(plan.canary(served(deployment), 3, "canary"))
    deployment.apply(plan.promote(served(deployment), "stable", "canary"))
    assert served(deployment) == Served(frozenset({1, 2, 3}), {"stable": 3, "canary": 3})
    deployment.apply(plan.rollback_stable(served(deployment), 2, "stable", "canary"))
    assert served(deployment) == Served(frozenset({1, 2}), {"stable": 2, "canary": 2})
    assert "  waiting 0.01 s for label caches to expire" in messages
    deployment.apply([])
    assert messages[-1] == "nothing to do"
