"""The command line: arguments to plans, analyze to decisions and exit statuses, errors to 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.rollout import cli, plan
from infra.rollout.served import Served, parse, served_of
from recognizer.sqlite_store import SqliteStore
from tests.conftest import free_port
from tests.infra.rollout.corrected_store import traffic, write


def args(deployment, *words: str):
    return cli.build_parser({}).parse_args(
        [
            *words,
            "--config",
            str(deployment.config_file),
            "--models-dir",
            str(deployment.models_dir),
        ]
    )


def test_rollback_stable_returns_to_the_newest_older_version_on_disk(deployment):
    [step] = cli.plan_for(deployment, args(deployment, "rollback", "--stable", "--keep-loaded"))
    assert step.target.labels == {"stable": 1, "canary": 1}
    steps = cli.plan_for(
        deployment, args(deployment, "rollback", "--stable", "--to", "3", "--keep-loaded")
    )
    assert [step.why for step in steps] == [
        "load version 3",
        "point stable and canary back at version 3",
    ]


def test_errors_are_one_line_on_stderr_and_exit_status_1(deployment, capsys):
    code = cli.main(
        ["rollback", "--to", "1", "--config", str(deployment.config_file), "--models-dir",
         str(deployment.models_dir)]
    )  # fmt: skip
    assert code == 1
    assert capsys.readouterr().err == "rollout: --to only goes with --stable\n"


def test_a_dry_run_writes_nothing(deployment, capsys):
    before = deployment.config_file.read_text()
    code = cli.main(
        ["rollback", "--dry-run", "--config", str(deployment.config_file), "--models-dir",
         str(deployment.models_dir)]
    )  # fmt: skip
    assert code == 0
    assert capsys.readouterr().out == "nothing to do\ndry run: nothing written\n"
    assert deployment.config_file.read_text() == before


def test_status_reports_what_it_cannot_reach_instead_of_failing(deployment, tmp_path, capsys):
    code = cli.main(
        ["status", "--config", str(deployment.config_file), "--models-dir",
         str(deployment.models_dir), "--server", f"http://127.0.0.1:{free_port()}",
         "--sqlite", str(tmp_path / "none.sqlite3")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "is unreachable" in out and "no prediction store at" in out
    assert "  3        yes      ok         no" in out


def canary_at_3(deployment) -> None:
    current = served_of(parse(deployment.config_file.read_text()), "mnist")
    deployment.apply(plan.canary(current, 3, "canary"))


def corrected_store(path: Path, canary_right: int, corrected: int = 200) -> Path:
    """Stable 2 right on 97% of `corrected` corrections, the canary 3 on `canary_right`."""
    log = SqliteStore(path)
    try:
        write(
            log,
            traffic(2, "stable", 400, corrected, round(corrected * 0.97)),
            traffic(3, "canary", 400, corrected, canary_right),
        )
    finally:
        log.close()
    return path


def analyze(deployment, log: Path, *words: str) -> int:
    """`analyze` on the scripted deployment, with margins a small log can meet."""
    return cli.analyze(
        deployment,
        args(deployment, "analyze", "--sqlite", str(log), "--accuracy-margin", "0.1", *words),
    )


def test_analyze_apply_promotes_through_the_promote_plan(deployment, tmp_path, capsys):
    canary_at_3(deployment)
    log = corrected_store(tmp_path / "log.sqlite3", canary_right=194)
    assert analyze(deployment, log, "--apply") == 0
    out = capsys.readouterr().out
    assert "decision: promote (every check is ok)" in out
    assert deployment.server.seen[-1] == Served(frozenset({1, 2, 3}), {"stable": 3, "canary": 3})


def test_analyze_apply_rolls_the_canary_back_and_unloads_it(deployment, tmp_path, capsys):
    canary_at_3(deployment)
    log = corrected_store(tmp_path / "log.sqlite3", canary_right=150)  # 75% against 97%
    assert analyze(deployment, log, "--apply") == 4
    assert "decision: rollback (worse: accuracy)" in capsys.readouterr().out
    assert deployment.server.seen[-2:] == [
        Served(frozenset({1, 2, 3}), {"stable": 2, "canary": 2}),
        Served(frozenset({1, 2}), {"stable": 2, "canary": 2}),
    ]


def test_analyze_without_apply_changes_nothing_and_waits_on_thin_evidence(
    deployment, tmp_path, capsys
):
    canary_at_3(deployment)
    before = deployment.config_file.read_text()
    log = corrected_store(tmp_path / "log.sqlite3", canary_right=19, corrected=20)
    assert analyze(deployment, log, "--apply", "--json") == 3
    out, err = capsys.readouterr()
    document = json.loads(out)  # stdout is the JSON alone
    assert (document["decision"], document["applied"]) == ("wait", False)
    assert (document["stable_version"], document["canary_version"]) == (2, 3)
    assert document["canary"]["feedback"] == 20 and document["canary"]["labels"] == ["canary"]
    [accuracy] = [c for c in document["checks"] if c["signal"] == "accuracy"]
    assert accuracy["outcome"] == "inconclusive" and accuracy["needed_per_version"] > 20
    assert "more" in accuracy["reason"]
    assert "nothing to do while the decision is to wait" in err
    assert deployment.config_file.read_text() == before
    # A promote decision without --apply is a recommendation only.
    promote = corrected_store(tmp_path / "promote.sqlite3", canary_right=194)
    assert analyze(deployment, promote) == 0
    assert deployment.config_file.read_text() == before


def test_analyze_without_a_canary_is_an_error(deployment, tmp_path, capsys):
    code = cli.main(
        ["analyze", "--config", str(deployment.config_file), "--models-dir",
         str(deployment.models_dir), "--sqlite", str(tmp_path / "none.sqlite3")]
    )  # fmt: skip
    assert code == 1
    assert capsys.readouterr().err == (
        "rollout: no canary to analyze: 'canary' points at stable's version 2; "
        "start one with `canary <version>`\n"
    )


def test_analyze_help_documents_the_exit_statuses_and_the_threshold_defaults(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.build_parser({}).parse_args(["analyze", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for line in ("0 promote:", "3 wait:", "4 roll back:", "1 an error", "2 a usage error"):
        assert line in text
    assert "accuracy drop to detect and the most tolerated (0.02)" in text
    assert (
        "--min-requests MIN_REQUESTS records per version before latency is compared (100)" in text
    )


def test_status_json_prints_the_figures_and_needs_no_model_server(deployment, tmp_path, capsys):
    canary_at_3(deployment)
    log = corrected_store(tmp_path / "log.sqlite3", canary_right=150)
    code = cli.main(
        ["status", "--json", "--config", str(deployment.config_file), "--models-dir",
         str(deployment.models_dir), "--server", f"http://127.0.0.1:{free_port()}",
         "--sqlite", str(log)]
    )  # fmt: skip
    assert code == 0
    versions = json.loads(capsys.readouterr().out)["versions"]
    assert [(v["version"], v["labels"], v["requests"], v["feedback"]) for v in versions] == [
        (2, ["stable"], 400, 200),
        (3, ["canary"], 400, 200),
    ]
    assert versions[1]["accuracy"] == 0.75
    assert versions[1]["latency_ms"] == {"p50": 9.5, "p99": 14.0}


def test_status_json_on_an_unreadable_log_is_an_error(deployment, tmp_path, capsys):
    code = cli.main(
        ["status", "--json", "--config", str(deployment.config_file), "--models-dir",
         str(deployment.models_dir), "--sqlite", str(tmp_path / "none.sqlite3")]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.startswith("rollout: no prediction store at")


@pytest.mark.parametrize("flag", ["--alpha", "--power", "--accuracy-margin", "--verdict-margin"])
def test_a_threshold_the_statistics_cannot_use_is_a_usage_error(flag, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.build_parser({}).parse_args(["analyze", flag, "0"])
    assert exited.value.code == 2
    assert f"argument {flag}: 0 is not between 0 and 1" in capsys.readouterr().err


# -- settings: the function's and the model server's own ---------------------------------


def test_the_defaults_are_the_functions_and_the_model_servers_settings(tmp_path):
    env = {
        "MODEL_NAME": "digits",
        "MODEL_SERVER_URL": "http://tf:8601/",
        "MODEL_LABEL": "live",
        "CANARY_LABEL": "next",
        "MODEL_LABEL_CACHE_SECONDS": "7",
        "SQLITE_PATH": str(tmp_path / "log.sqlite3"),
        "MODELS_DIR": str(tmp_path),
    }
    parsed = cli.build_parser(env).parse_args(["analyze"])
    assert (parsed.model, parsed.server) == ("digits", "http://tf:8601")
    assert (parsed.stable_label, parsed.canary_label) == ("live", "next")
    assert (parsed.store, parsed.sqlite) == ("sqlite", tmp_path / "log.sqlite3")
    assert (parsed.models_dir, parsed.drain_seconds) == (tmp_path, 14)
    cassandra = cli.build_parser({"CASSANDRA_CONTACT_POINTS": "db1"}).parse_args(["status"])
    assert cassandra.store == "cassandra"


@pytest.mark.parametrize(
    "name, value",
    [
        ("MODEL_NAME", "mnist v2"),
        ("MODEL_SERVER_URL", "tf:8501"),
        ("MODEL_LABEL", "stable/2"),
        ("CANARY_LABEL", "a b"),
        ("MODEL_LABEL_CACHE_SECONDS", "soon"),
        ("PREDICTION_STORE", "postgres"),
        ("SQLITE_PATH", "/"),
        ("MODELS_DIR", __file__),
        ("CASSANDRA_PORT", "nine"),  # read by status and analyze from the store
    ],
)
def test_a_malformed_setting_is_a_usage_error_naming_it(monkeypatch, capsys, name, value):
    monkeypatch.setenv(name, value)
    if name.startswith("CASSANDRA_"):
        monkeypatch.setenv("CASSANDRA_CONTACT_POINTS", "127.0.0.1")
    assert cli.main(["status"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"python -m infra.rollout: error: {name} must be ")
