"""models.config through the protos: read, change, render, write atomically."""

from __future__ import annotations

import os

import pytest

from infra.rollout.errors import RolloutError
from infra.rollout.served import (
    Served,
    parse,
    render,
    served_of,
    with_served,
    write_atomically,
)
from serving.config import parse_model_server_config, resolve_models
from tests.conftest import ROOT

SHIPPED_TEXT = (ROOT / "serving" / "models.config").read_text()
TWO_MODELS = """
model_config_list {
  config { name: "other" base_path: "/models/other" model_platform: "tensorflow" }
  config {
    name: "mnist" base_path: "/models/mnist" model_platform: "tensorflow"
    model_version_policy { specific { versions: 2 versions: 1 } }
    version_labels { key: "stable" value: 2 }
  }
}
"""


def test_the_shipped_config_reads_as_versions_and_labels():
    served = served_of(parse(SHIPPED_TEXT), "mnist")
    assert served == Served(frozenset({1, 2, 3, 4, 5}), {"stable": 5, "canary": 5})


def test_a_change_touches_only_the_model_s_versions_and_labels():
    config = parse(TWO_MODELS)
    target = Served(frozenset({1, 2, 3}), {"stable": 2, "canary": 3})
    updated = with_served(config, "mnist", target)
    assert served_of(updated, "mnist") == target
    assert served_of(config, "mnist") == Served(frozenset({1, 2}), {"stable": 2})  # a copy
    other, mnist = updated.model_config_list.config
    assert other == config.model_config_list.config[0]
    assert (mnist.base_path, mnist.model_platform) == ("/models/mnist", "tensorflow")
    assert list(mnist.model_version_policy.specific.versions) == [1, 2, 3]


def test_the_rendered_text_keeps_the_comment_header_and_parses_as_the_server_parses_it(tmp_path):
    target = Served(frozenset({1, 2, 3}), {"stable": 2, "canary": 3})
    text = render(with_served(parse(SHIPPED_TEXT), "mnist", target), SHIPPED_TEXT)
    header = SHIPPED_TEXT[: SHIPPED_TEXT.index("model_config_list")]
    assert text.startswith(header)
    [model] = resolve_models(
        parse_model_server_config(text), config_dir=tmp_path, models_dir=tmp_path
    )
    assert model.policy.versions == frozenset({1, 2, 3})
    assert model.labels == {"stable": 2, "canary": 3}


def test_rendering_the_shipped_config_unchanged_changes_nothing_but_layout():
    config = parse(SHIPPED_TEXT)
    again = render(with_served(config, "mnist", served_of(config, "mnist")), SHIPPED_TEXT)
    assert parse(again) == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_config_list { config { name: 'x' } }", "no model named 'mnist'"),
        (
            "model_config_list { config { name: 'mnist' base_path: '/m' } }",
            "default latest version policy",
        ),
        (
            "model_config_list { config { name: 'mnist' model_version_policy { all {} } } }",
            "uses the all version policy",
        ),
        ("model_config_list { nonsense: 1 }", "not a ModelServerConfig"),
    ],
)
def test_configs_a_rollout_cannot_manage_are_refused(text, message):
    with pytest.raises(RolloutError, match=message):
        served_of(parse(text), "mnist")


def test_an_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "models.config"
    path.write_text("old")
    os.chmod(path, 0o640)
    write_atomically(path, "new")
    assert path.read_text() == "new"
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["models.config"]
