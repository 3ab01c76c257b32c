"""`python -m infra.rollout analyze` as a pipeline runs it: on logs with people's corrections.

Records and corrections are written by the function's own stores (SqliteStore, and
CassandraStore on the session's live node), and the tool runs as a subprocess. With the
development model server serving a temporary tree (versions 1, 2 and a copy of 2 as 3;
stable 2, canary 3), `--apply` goes all the way: a thin log waits and changes nothing, a
less accurate canary is rolled back and unloaded, a canary as good as stable is promoted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from infra.rollout.served import Served, parse, render, served_of, with_served
from infra.rollout.stats import wilson
from recognizer.cassandra_store import CassandraStore
from recognizer.sqlite_store import SqliteStore
from tests.conftest import PYTHON, ROOT, SHELL_SETTINGS, wait_until
from tests.infra.rollout.corrected_store import Traffic, traffic, write
from tests.support.dev_model_server import dev_model_server, label_available

CANARY_AT_3 = Served(frozenset({1, 2, 3}), {"stable": 2, "canary": 3})
# Margins a few hundred corrections can meet (the defaults want thousands).
SMALL_LOG = ("--accuracy-margin", "0.1", "--low-confidence-margin", "0.1")


@dataclass
class Tree:
    config: Path
    models_dir: Path
    model_server: str


def deployment_files(root: Path, served: Served) -> tuple[Path, Path]:
    """Versions 1 and 2 and a copy of 2 as 3, and the shipped config serving `served`."""
    models_dir = root / "models"
    for version, source in ((1, 1), (2, 2), (3, 2)):
        shutil.copytree(
            ROOT / "models" / "mnist" / str(source), models_dir / "mnist" / str(version)
        )
    shipped = (ROOT / "serving" / "models.config").read_text()
    config = root / "models.config"
    config.write_text(render(with_served(parse(shipped), "mnist", served), shipped))
    return config, models_dir


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Iterator[Tree]:
    root = tmp_path_factory.mktemp("analyze")
    config, models_dir = deployment_files(root, CANARY_AT_3)
    log = root / "model_server.log"
    with dev_model_server(config, models_dir, label="canary", log=log) as url:
        yield Tree(config, models_dir, url)


def rollout(
    *args: str, env: dict[str, str], config: Path, models_dir: Path, server: str = ""
) -> subprocess.CompletedProcess:
    """The tool as an operator or a pipeline runs it; any exit status is returned."""
    base = {k: v for k, v in os.environ.items() if k not in SHELL_SETTINGS}
    command = [PYTHON, "-m", "infra.rollout", *args, "--config", str(config),
               "--models-dir", str(models_dir)]  # fmt: skip
    if server:
        command += ["--server", server]
    if args[0] in ("analyze", "canary"):
        command += ["--drain-seconds", "0", "--poll-seconds", "0.1", "--timeout", "120"]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**base, **env, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    print(f"$ python -m infra.rollout {' '.join(args)} -> {done.returncode}\n{done.stdout}")
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-2000:]
    return done


def sqlite_store(path: Path, *batches: Traffic) -> dict[str, str]:
    log = SqliteStore(path)
    try:
        write(log, *batches)
    finally:
        log.close()
    return {"PREDICTION_STORE": "sqlite", "SQLITE_PATH": str(path)}


def served(tree: Tree) -> Served:
    return served_of(parse(tree.config.read_text()), "mnist")


def test_a_pipeline_waits_then_rolls_back_then_promotes(tree, tmp_path):
    def analyze(env: dict[str, str], *words: str) -> subprocess.CompletedProcess:
        return rollout(
            "analyze", *SMALL_LOG, *words, env=env, config=tree.config,
            models_dir=tree.models_dir, server=tree.model_server,
        )  # fmt: skip

    # 20 corrections a side: nothing can be told yet, and --apply changes nothing.
    thin = sqlite_store(
        tmp_path / "thin.sqlite3",
        traffic(2, "stable", 200, 20, 19),
        traffic(3, "canary", 200, 20, 19),
    )
    done = analyze(thin, "--apply")
    assert done.returncode == 3, done.stderr[-2000:]
    assert "decision: wait (inconclusive: accuracy)" in done.stdout
    assert "each version needs about" in done.stdout and "canary " in done.stdout
    assert served(tree) == CANARY_AT_3

    # The canary is right on 70% of its corrections, stable on 97%: roll it back.
    worse = sqlite_store(
        tmp_path / "worse.sqlite3",
        traffic(2, "stable", 400, 200, 194),
        traffic(3, "canary", 400, 200, 140),
    )
    done = analyze(worse, "--apply")
    assert done.returncode == 4, done.stderr[-2000:]
    assert "decision: rollback (worse: accuracy)" in done.stdout
    assert "canary 70.0% of 200 vs stable 97.0% of 200" in done.stdout
    assert "point canary back at version 2" in done.stdout and "unload version 3" in done.stdout
    assert served(tree) == Served(frozenset({1, 2}), {"stable": 2, "canary": 2})
    states = requests.get(f"{tree.model_server}/v1/models/mnist", timeout=5).json()
    assert {s["version"]: s["state"] for s in states["model_version_status"]}["3"] == "END"

    # The canary started again, now as good as stable: promote it.
    started = rollout(
        "canary", "3", env={}, config=tree.config, models_dir=tree.models_dir,
        server=tree.model_server,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr[-2000:]
    good = sqlite_store(
        tmp_path / "good.sqlite3",
        traffic(2, "stable", 400, 200, 194, low_confidence=20),
        traffic(3, "canary", 400, 200, 195, low_confidence=18),
    )
    done = analyze(good, "--apply", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(done.stdout)
    assert (document["decision"], document["applied"]) == ("promote", True)
    assert {c["signal"]: c["outcome"] for c in document["checks"]} == {
        "accuracy": "ok", "low-confidence share": "ok", "unsure share": "ok",
        "not-a-digit share": "ok", "latency p50": "ok", "latency p99": "ok",
        "errors": "not judged",
    }  # fmt: skip
    assert "point stable at version 3" in done.stderr  # the steps, kept off the JSON
    assert served(tree).labels == {"stable": 3, "canary": 3}
    wait_until(lambda: label_available(tree.model_server, "stable"), "stable on the server")
    metadata = requests.get(
        f"{tree.model_server}/v1/models/mnist/labels/stable/metadata", timeout=5
    ).json()
    assert metadata["model_spec"]["version"] == "3"


def test_status_json_counts_what_the_log_holds(tree, tmp_path):
    env = sqlite_store(
        tmp_path / "log.sqlite3",
        traffic(2, "stable", 300, 100, 96, low_confidence=30),
        traffic(3, "canary", 120, 40, 30),
    )
    done = rollout("status", "--json", env=env, config=tree.config, models_dir=tree.models_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(done.stdout)
    # Each replica's state against the config (no --server here: the default URL alone).
    (replica,) = document.pop("replicas")
    assert replica["url"] == "http://localhost:8501" and "agrees" in replica
    labels = {v: sorted(k for k, n in served(tree).labels.items() if n == v) for v in (2, 3)}
    assert document == {
        "versions": [
            {
                "version": 2,
                "labels": labels[2],
                "requests": 300,
                "feedback": 100,
                "accuracy": 0.96,
                "accuracy_ci": list(wilson(96, 100)),
                "mean_confidence": pytest.approx((30 * 0.6 + 270 * 0.99) / 300),
                "low_confidence_share": 0.1,
                "latency_ms": {"p50": 9.5, "p99": 14.0},
                "verdicts": {"digit": 1.0, "unsure": 0.0, "not_a_digit": 0.0},
                "drift": None,  # stable's version has no reference profile here
            },
            {
                "version": 3,
                "labels": labels[3],
                "requests": 120,
                "feedback": 40,
                "accuracy": 0.75,
                "accuracy_ci": list(wilson(30, 40)),
                "mean_confidence": pytest.approx(0.99),
                "low_confidence_share": 0.0,
                "latency_ms": {"p50": 9.5, "p99": 14.0},
                "verdicts": {"digit": 1.0, "unsure": 0.0, "not_a_digit": 0.0},
                "drift": None,  # stable's version has no reference profile here
            },
        ]
    }
    table = rollout("status", env=env, config=tree.config, models_dir=tree.models_dir)
    assert re.search(r"^  2\s.*\s100\s+96\.0% \(90\.2%-98\.4%\)\s+n/a$", table.stdout, re.M)
    assert "otherwise right / corrected" in table.stdout


def test_analyze_reads_corrections_from_cassandra(cassandra, tmp_path):
    keyspace = cassandra.keyspace("analyze")
    env = cassandra.env(keyspace)
    log = CassandraStore.from_env(env)
    try:
        write(log, traffic(2, "stable", 150, 100, 97), traffic(3, "canary", 150, 100, 60))
    finally:
        log.close()
    config, models_dir = deployment_files(tmp_path, CANARY_AT_3)  # no server: no --apply
    done = rollout("analyze", "--json", *SMALL_LOG, env=env, config=config, models_dir=models_dir)
    assert done.returncode == 4, done.stderr[-2000:]
    document = json.loads(done.stdout)
    assert (document["decision"], document["applied"]) == ("rollback", False)
    assert [
        (v["requests"], v["feedback"], v["accuracy"])
        for v in (document["stable"], document["canary"])
    ] == [
        (150, 100, 0.97),
        (150, 100, 0.6),
    ]
    [accuracy] = [c for c in document["checks"] if c["signal"] == "accuracy"]
    assert accuracy["outcome"] == "worse" and accuracy["ci"][1] < 0
    assert served_of(parse(config.read_text()), "mnist") == CANARY_AT_3
