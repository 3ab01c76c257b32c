"""The shipped TF Serving configs, base path resolution, version policies and CLI flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving import ConfigError
from serving.__main__ import build_parser
from serving.config import (
    VersionPolicy,
    load_model_config_file,
    load_monitoring_config,
    parse_model_server_config,
    resolve_base_path,
    resolve_models,
)
from serving.protos import parse_batching_parameters

SERVING_DIR = Path(__file__).resolve().parents[2] / "serving"


def test_shipped_models_config(tmp_path: Path):
    proto = parse_model_server_config((SERVING_DIR / "models.config").read_text())
    (model,) = proto.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (
        "mnist",
        "/models/mnist",
        "tensorflow",
    )
    assert list(model.model_version_policy.specific.versions) == [1, 2, 3, 4, 5]
    assert dict(model.version_labels) == {"stable": 5, "canary": 5}

    (resolved,) = load_model_config_file(SERVING_DIR / "models.config", models_dir=tmp_path)
    assert resolved.base_path == tmp_path / "mnist"
    assert resolved.policy == VersionPolicy("specific", versions=frozenset({1, 2, 3, 4, 5}))
    assert resolved.labels == {"stable": 5, "canary": 5}


def test_shipped_monitoring_config():
    settings = load_monitoring_config(SERVING_DIR / "monitoring.config")
    assert settings.enabled
    assert settings.path == "/monitoring/prometheus/metrics"


def test_shipped_batching_config_is_valid_batching_parameters():
    params = parse_batching_parameters((SERVING_DIR / "batching.config").read_text())
    assert params.max_batch_size.value == 64
    assert params.batch_timeout_micros.value == 0  # no waiting: see the comment in the file
    assert params.num_batch_threads.value == 2
    assert params.max_enqueued_batches.value == 100


@pytest.mark.parametrize(
    ("base_path", "expected"),
    [
        ("/models/mnist", "MODELS/mnist"),
        ("/models/a/b", "MODELS/a/b"),
        ("/models", "MODELS"),
        ("/modelsx/mnist", "/modelsx/mnist"),
        ("/srv/models/mnist", "/srv/models/mnist"),
        ("relative/mnist", "CONFIG/relative/mnist"),
        ("../models/mnist", "CONFIG/../models/mnist"),
    ],
)
def test_base_path_resolution(tmp_path: Path, base_path: str, expected: str):
    models_dir, config_dir = tmp_path / "m", tmp_path / "c"
    want = Path(expected.replace("MODELS", str(models_dir)).replace("CONFIG", str(config_dir)))
    assert resolve_base_path(base_path, config_dir=config_dir, models_dir=models_dir) == want


@pytest.mark.parametrize(
    ("policy_text", "on_disk", "aspired"),
    [
        ("", [1, 2, 10], {10}),  # no policy: TF Serving serves the latest one
        ("latest {}", [3, 1], {3}),
        ("latest { num_versions: 2 }", [1, 2, 10], {2, 10}),
        ("all {}", [1, 2, 10], {1, 2, 10}),
        ("specific { versions: 2 versions: 7 }", [1, 2, 10], {2}),
        ("latest {}", [], set()),
    ],
)
def test_version_policies(tmp_path: Path, policy_text: str, on_disk: list[int], aspired: set[int]):
    policy = f"model_version_policy {{ {policy_text} }}" if policy_text else ""
    text = (
        'model_config_list { config { name: "m" base_path: "/models/m" '
        f'model_platform: "tensorflow" {policy} }} }}'
    )
    (model,) = resolve_models(
        parse_model_server_config(text), config_dir=tmp_path, models_dir=tmp_path
    )
    assert model.policy.select(on_disk) == aspired


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_config_list { config { name: ", "Invalid ModelServerConfig"),
        (
            'model_config_list { config { name: "a" base_path: "/m" model_platform: "tensorflow" } '
            'config { name: "a" base_path: "/n" model_platform: "tensorflow" } }',
            "Illegal to list model a multiple times in config list",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/m" model_platform: "onnx" } }',
            "Model a requests unsupported platform onnx",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/m" } }',
            "nor ModelServerConfig::model_platform",
        ),
        (
            'model_config_list { config { name: "a" model_platform: "tensorflow" } }',
            "Model a has no base_path",
        ),
    ],
)
def test_invalid_configs_are_rejected(tmp_path: Path, text: str, message: str):
    with pytest.raises(ConfigError) as raised:
        resolve_models(parse_model_server_config(text), config_dir=tmp_path, models_dir=tmp_path)
    assert message in raised.value.message


def test_empty_config_serves_nothing(tmp_path: Path):
    assert (
        resolve_models(parse_model_server_config(""), config_dir=tmp_path, models_dir=tmp_path)
        == ()
    )


def test_cli_defaults_follow_tf_serving_and_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MODEL_SERVER_PORT", raising=False)
    monkeypatch.delenv("MODELS_DIR", raising=False)
    args = build_parser().parse_args([])
    assert args.rest_api_port == 8501
    assert args.rest_api_host == "127.0.0.1"
    assert args.model_config_file == SERVING_DIR / "models.config"
    assert args.models_dir == SERVING_DIR.parent / "models"
    assert args.model_config_file_poll_wait_seconds == 2
    assert args.file_system_poll_wait_seconds == 1
    assert args.allow_version_labels_for_unavailable_models is False

    monkeypatch.setenv("MODEL_SERVER_PORT", "9100")
    monkeypatch.setenv("MODELS_DIR", "/srv/models")
    args = build_parser().parse_args([])
    assert (args.rest_api_port, args.models_dir) == (9100, Path("/srv/models"))
    args = build_parser().parse_args(["--rest_api_port=9200", "--models_dir", "/x"])
    assert (args.rest_api_port, args.models_dir) == (9200, Path("/x"))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--allow_version_labels_for_unavailable_models"], True),
        (["--allow_version_labels_for_unavailable_models=true"], True),
        (["--allow_version_labels_for_unavailable_models=false"], False),
    ],
)
def test_boolean_flags_take_tf_serving_spellings(flags: list[str], expected: bool):
    args = build_parser().parse_args(flags)
    assert args.allow_version_labels_for_unavailable_models is expected
