"""Reading TF Serving's text-proto configs and resolving model base paths.

The same models.config serves the container (where models live under /models)
and a laptop: a base path under /models/ is resolved inside a local models
directory, and a relative base path is resolved next to the config file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving import protos
from serving.errors import ConfigError

CONTAINER_MODELS_ROOT = PurePosixPath("/models")
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
TENSORFLOW_PLATFORM = "tensorflow"


@dataclass(frozen=True)
class VersionPolicy:
    """Which version directories to serve: TF Serving's ServableVersionPolicy."""

    kind: str = "latest"  # "latest" | "all" | "specific"
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    def select(self, on_disk: Iterable[int]) -> frozenset[int]:
        """The aspired versions among those found on disk."""
        found = sorted(set(on_disk))
        if self.kind == "all":
            return frozenset(found)
        if self.kind == "specific":
            return frozenset(v for v in found if v in self.versions)
        return frozenset(found[-self.num_versions :]) if found else frozenset()


@dataclass(frozen=True)
class ModelConfig:
    """One served model with its base path already resolved to a local directory."""

    name: str
    base_path: Path
    policy: VersionPolicy = VersionPolicy()
    labels: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PrometheusSettings:
    enabled: bool = True
    path: str = DEFAULT_PROMETHEUS_PATH


def parse_model_server_config(text: str) -> model_server_config_pb2.ModelServerConfig:
    """Parse ModelServerConfig text format; a syntax error is a ConfigError."""
    try:
        return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as exc:
        raise ConfigError("INVALID_ARGUMENT", f"Invalid ModelServerConfig: {exc}") from exc


def resolve_base_path(base_path: str, *, config_dir: Path, models_dir: Path) -> Path:
    """Map a config base_path to a local directory (see the module docstring)."""
    posix = PurePosixPath(base_path)
    if posix == CONTAINER_MODELS_ROOT or CONTAINER_MODELS_ROOT in posix.parents:
        return models_dir.joinpath(*posix.relative_to(CONTAINER_MODELS_ROOT).parts)
    path = Path(base_path).expanduser()
    return path if path.is_absolute() else config_dir / path


def check_inside_models_dir(models: Iterable[ModelConfig], models_dir: Path) -> None:
    """Refuse a base path that leaves the models directory once '..' and symlinks resolve.

    Whoever can reach the admin API could otherwise load any SavedModel on the disk
    (one whose signature reads files, say); TF Serving itself has no such check.
    """
    root = models_dir.resolve()
    for model in models:
        path = model.base_path.resolve()
        if path != root and root not in path.parents:
            raise ConfigError(
                "INVALID_ARGUMENT",
                f"Base path {model.base_path} of model {model.name} is outside the models "
                f"directory {models_dir} (--allow_base_path_outside_models_dir allows it)",
            )


def _policy(proto: model_server_config_pb2.ModelConfig) -> VersionPolicy:
    policy = proto.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        return VersionPolicy("specific", versions=frozenset(policy.specific.versions))
    # TF Serving serves max(num_versions, 1) latest versions; no policy means latest 1.
    return VersionPolicy("latest", num_versions=max(policy.latest.num_versions, 1))


def resolve_models(
    config: model_server_config_pb2.ModelServerConfig, *, config_dir: Path, models_dir: Path
) -> tuple[ModelConfig, ...]:
    """Validate a ModelServerConfig as TF Serving does and resolve its models."""
    choice = config.WhichOneof("config")
    if choice is None:
        return ()
    if choice != "model_config_list":
        raise ConfigError(
            "FAILED_PRECONDITION",
            "Cannot transition to requested config. It is only legal to transition "
            "from one ModelConfigList to another.",
        )
    models: list[ModelConfig] = []
    seen: set[str] = set()
    for proto in config.model_config_list.config:
        if not proto.name:
            raise ConfigError("INVALID_ARGUMENT", "A model in the config list has no name.")
        if proto.name in seen:
            raise ConfigError(
                "INVALID_ARGUMENT",
                f"Illegal to list model {proto.name} multiple times in config list",
            )
        seen.add(proto.name)
        platform = proto.model_platform or ("tensorflow" if proto.model_type == 1 else "")
        if not platform:
            raise ConfigError(
                "INVALID_ARGUMENT",
                "Illegal setting neither ModelServerConfig::model_type (deprecated) "
                "nor ModelServerConfig::model_platform.",
            )
        if platform != TENSORFLOW_PLATFORM:
            raise ConfigError(
                "INVALID_ARGUMENT", f"Model {proto.name} requests unsupported platform {platform}"
            )
        if not proto.base_path:
            raise ConfigError("INVALID_ARGUMENT", f"Model {proto.name} has no base_path")
        models.append(
            ModelConfig(
                name=proto.name,
                base_path=resolve_base_path(
                    proto.base_path, config_dir=config_dir, models_dir=models_dir
                ),
                policy=_policy(proto),
                labels=dict(proto.version_labels),
            )
        )
    return tuple(models)


def load_model_config_file(path: Path, *, models_dir: Path) -> tuple[ModelConfig, ...]:
    """Read, parse and resolve a models.config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("NOT_FOUND", f"Cannot read model config file {path}: {exc}") from exc
    return resolve_models(
        parse_model_server_config(text), config_dir=path.resolve().parent, models_dir=models_dir
    )


def load_monitoring_config(path: Path | None) -> PrometheusSettings:
    """Prometheus settings from a MonitoringConfig file; off without one, as in TF Serving.

    server.cc starts from an empty MonitoringConfig when --monitoring_config_file is not
    given, and http_server.cc registers the metrics page only if prometheus_config.enable.
    """
    if path is None:
        return PrometheusSettings(enabled=False)
    try:
        proto = protos.parse_monitoring_config(path.read_text(encoding="utf-8"))
    except (OSError, text_format.ParseError) as exc:
        raise ConfigError("INVALID_ARGUMENT", f"Invalid monitoring config {path}: {exc}") from exc
    prometheus = proto.prometheus_config
    return PrometheusSettings(prometheus.enable, prometheus.path or DEFAULT_PROMETHEUS_PATH)
