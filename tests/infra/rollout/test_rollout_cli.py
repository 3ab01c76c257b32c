"""The command line: arguments to plans, errors to exit status 1 with a message."""

from __future__ import annotations

from infra.rollout import cli
from tests.conftest import free_port


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
    assert "is unreachable" in out and "no prediction log at" in out
    assert "  3        yes      ok         no" in out
