"""A temporary deployment for the rollout tool, with a model server scripted from its config."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from infra.rollout.cli import Deployment
from infra.rollout.served import Served, parse, render, served_of, with_served
from recognizer.model_client import VersionState
from tests.conftest import ROOT

SHIPPED_CONFIG = ROOT / "serving" / "models.config"
COMMITTED = ROOT / "models" / "mnist"
# The state the rollout tests start from, whatever the shipped config serves today.
BEFORE_A_CANARY = Served(frozenset({1, 2}), {"stable": 2, "canary": 2})


class ScriptedServer:
    """Serves whatever the config file says, at once; `broken` versions fail to load."""

    url = "http://scripted"

    def __init__(self, config_file: Path, broken: frozenset[int] = frozenset()) -> None:
        self.config_file = config_file
        self.broken = broken
        self.seen: list[Served] = []

    def _served(self) -> Served:
        served = served_of(parse(self.config_file.read_text()), "mnist")
        if not self.seen or self.seen[-1] != served:
            self.seen.append(served)
        return served

    def versions(self) -> dict[int, VersionState]:
        return {
            v: VersionState("END", "corrupt") if v in self.broken else VersionState("AVAILABLE")
            for v in self._served().versions
        }

    def available(self) -> frozenset[int]:
        return frozenset(v for v, s in self.versions().items() if s.state == "AVAILABLE")

    def label_version(self, label: str) -> int | None:
        return self._served().labels.get(label)


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    """A temporary models tree (1, 2 and a third copy of 2) and the shipped config's text
    serving 1 and 2, both labels on 2."""
    for version, source in ((1, 1), (2, 2), (3, 2)):
        target = tmp_path / "models" / "mnist" / str(version)
        target.mkdir(parents=True)
        shutil.copy(COMMITTED / str(source) / "saved_model.pb", target)
    config = tmp_path / "models.config"
    shipped = SHIPPED_CONFIG.read_text()
    config.write_text(render(with_served(parse(shipped), "mnist", BEFORE_A_CANARY), shipped))
    return Deployment(
        config_file=config,
        models_dir=tmp_path / "models",
        model="mnist",
        server=ScriptedServer(config),  # type: ignore[arg-type]
        grpc=None,
        timeout=0.5,
        poll_seconds=0.01,
        drain_seconds=0.0,
        say=lambda _: None,
    )
