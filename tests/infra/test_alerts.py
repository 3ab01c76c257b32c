"""infra/monitoring: the rules load (promtool check rules), each alert fires and stays quiet
where its unit tests say (promtool test rules), and every alert has both kinds of case."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

MONITORING = ROOT / "infra" / "monitoring"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

needs_promtool = pytest.mark.skipif(
    not os.access(PROMTOOL, os.X_OK),
    reason="needs promtool from Debian's prometheus package (make prometheus installs it)",
)


def alert_names() -> set[str]:
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_every_alert_has_a_firing_and_a_quiet_case():
    cases = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
    checks = [check for case in cases for check in case.get("alert_rule_test", [])]
    firing = {c["alertname"] for c in checks if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in checks if not c.get("exp_alerts")}
    assert alert_names() == firing == quiet


@needs_promtool
def test_promtool_checks_the_rules_and_the_config():
    for command in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"]):
        checked = subprocess.run(
            [PROMTOOL, *command], cwd=MONITORING, capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_promtool_unit_tests_pass():
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts_test.yml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


@needs_promtool
def test_a_rule_made_blind_fails_its_unit_tests(tmp_path):
    """The cases can fail: with the error ratio's threshold raised past any input, its
    firing case fails."""
    rules = (MONITORING / "alerts.yml").read_text()
    blind = rules.replace(
        "expr: digit:http_error_ratio:rate5m > 0.05", "expr: digit:http_error_ratio:rate5m > 2"
    )
    assert blind != rules
    (tmp_path / "alerts.yml").write_text(blind)
    shutil.copy(MONITORING / "alerts_test.yml", tmp_path)
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert tested.returncode != 0
    assert "DigitErrorRatioHigh" in tested.stdout + tested.stderr
