"""Rollouts across replicas that poll one config on their own clocks (scripted replicas).

The real fleet, three development model servers behind nginx under load, is
tests/cluster/test_rollout_fleet.py; these check the rules on replicas whose lag is chosen.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from infra.rollout import cli, plan
from infra.rollout.errors import RolloutError
from infra.rollout.fleet import Fleet, discover, replicas_setting
from infra.rollout.served import Served, parse, served_of
from recognizer.env import SettingsError
from recognizer.sqlite_store import SqliteStore
from tests.infra.rollout.conftest import ScriptedServer
from tests.infra.rollout.corrected_store import traffic, write


class LaggingServer(ScriptedServer):
    """Re-reads the config only every `lag` questions: a replica whose poll comes later."""

    def __init__(self, url: str, config_file: Path, lag: int) -> None:
        super().__init__(config_file)
        self.url, self.lag, self.asked = url, lag, 0
        self.snapshot = served_of(parse(config_file.read_text()), "mnist")

    def _served(self) -> Served:
        self.asked += 1
        if self.lag and self.asked % self.lag == 0:
            self.snapshot = served_of(parse(self.config_file.read_text()), "mnist")
            if not self.seen or self.seen[-1] != self.snapshot:
                self.seen.append(self.snapshot)
        return self.snapshot


def fleet_of(deployment, *replicas: ScriptedServer) -> Fleet:
    urls = ",".join(r.url for r in replicas)
    return Fleet(urls, deployment.server.url, "mnist", {r.url: r for r in replicas})


def served(deployment) -> Served:
    return served_of(parse(deployment.config_file.read_text()), "mnist")


def test_each_step_waits_for_every_replica_and_names_the_one_that_lags(deployment):
    prompt = LaggingServer("http://a", deployment.config_file, lag=1)
    late = LaggingServer("http://b", deployment.config_file, lag=12)
    deployment.fleet = fleet_of(deployment, prompt, late)
    deployment.poll_seconds, deployment.timeout = 0.01, 5
    deployment.config_poll_seconds = 0.05  # b answers 12 polls (~0.12 s) late: named
    said: list[str] = []
    deployment.say = said.append
    deployment.apply(plan.canary(served(deployment), 3, "canary"))
    deployment.apply(plan.promote(served(deployment), "stable", "canary"))
    deployment.apply(plan.rollback_stable(served(deployment), 2, "stable", "canary"))

    # The laggard went through every state in order, none skipped: each step waited for it.
    assert late.seen == [
        Served(frozenset({1, 2, 3}), {"stable": 2, "canary": 2}),
        Served(frozenset({1, 2, 3}), {"stable": 2, "canary": 3}),
        Served(frozenset({1, 2, 3}), {"stable": 3, "canary": 3}),
        Served(frozenset({1, 2, 3}), {"stable": 2, "canary": 2}),
        Served(frozenset({1, 2}), {"stable": 2, "canary": 2}),
    ]
    assert any(line.startswith("  replica http://b still disagrees after") for line in said)
    assert not any("replica http://a still disagrees" in line for line in said)
    assert any("converged on 2 replica(s)" in line for line in said)
    steps, _, states = deployment.convergence[0]
    assert steps == "load version 3" and {s.url for s in states} == {"http://a", "http://b"}
    assert all(s.missing is None and s.converged_after is not None for s in states)


def test_a_label_moves_only_to_a_version_every_replica_has_available(deployment):
    prompt = LaggingServer("http://a", deployment.config_file, lag=1)
    stuck = LaggingServer("http://b", deployment.config_file, lag=0)  # never re-reads
    deployment.fleet = fleet_of(deployment, prompt, stuck)
    steps = plan.canary(served(deployment), 3, "canary")
    with pytest.raises(RolloutError, match=r"not every replica converged: http://b: version 3"):
        deployment.apply(steps[:1])
    _, config = deployment.read()
    with pytest.raises(RolloutError, match="version 3 is not"):
        deployment.validated(config, served_of(config, "mnist"), steps[1].target)
    assert served(deployment).labels == {"stable": 2, "canary": 2}


def test_a_replica_that_fails_to_load_stops_the_rollout_and_is_named(deployment):
    prompt = LaggingServer("http://a", deployment.config_file, lag=1)
    broken = LaggingServer("http://b", deployment.config_file, lag=1)
    broken.broken = frozenset({3})
    deployment.fleet = fleet_of(deployment, prompt, broken)
    # END without a LOADING first is not yet a failure: one LOADING poll, then END.
    with pytest.raises(RolloutError, match=r"after 0\.5 s not every replica converged: http://b"):
        deployment.apply(plan.canary(served(deployment), 3, "canary"))
    assert served(deployment).labels == {"stable": 2, "canary": 2}


def test_status_json_has_each_replicas_state(deployment, tmp_path):
    prompt = LaggingServer("http://a", deployment.config_file, lag=1)
    late = LaggingServer("http://b", deployment.config_file, lag=0)  # never re-reads
    deployment.fleet = fleet_of(deployment, prompt, late)
    deployment.shared.read()
    deployment.shared.write(deployment.config_file.read_text().replace("value: 2", "value: 1"))
    log = tmp_path / "log.sqlite3"
    store = SqliteStore(log)
    write(store, traffic(2, "stable", 10, 0, 0))
    store.close()
    args = cli.build_parser({}).parse_args(["status", "--json", "--sqlite", str(log)])
    document = json.loads(cli.status(deployment, args))
    replicas = {r["url"]: r for r in document["replicas"]}
    assert replicas["http://a"]["agrees"] is True
    assert replicas["http://a"]["labels"] == {"canary": 1, "stable": 1}
    assert replicas["http://b"]["agrees"] is False
    assert replicas["http://b"]["disagreements"] == [
        "label 'canary' serves 2, not 1",
        "label 'stable' serves 2, not 1",
    ]
    assert replicas["http://b"]["versions"] == {"1": "AVAILABLE", "2": "AVAILABLE"}
    text = cli.status(deployment, cli.build_parser({}).parse_args(["status", "--sqlite", str(log)]))
    assert "replicas: 1 of 2 serve the config" in text
    assert "  http://b: label 'canary' serves 2, not 1" in text


def test_replicas_are_discovered_from_a_list_or_every_address_a_name_resolves_to():
    assert discover("", "http://one:8501/") == ["http://one:8501"]
    assert discover("http://a:1, http://b:2/", "x") == ["http://a:1", "http://b:2"]
    resolved = {info[4][0] for info in socket.getaddrinfo("localhost", 8501)}
    found = discover("dns://localhost:8501", "x")
    assert len(found) == len(resolved) and "http://127.0.0.1:8501" in found
    with pytest.raises(RolloutError, match="cannot resolve"):
        discover("dns://no-such-host.invalid:8501", "x")


def test_model_server_replicas_is_checked_at_start_up():
    assert replicas_setting({"MODEL_SERVER_REPLICAS": "dns://tf:8501"}) == "dns://tf:8501"
    with pytest.raises(SettingsError, match="MODEL_SERVER_REPLICAS"):
        replicas_setting({"MODEL_SERVER_REPLICAS": "tf-serving"})
