"""The development model server: config, repository, pollers and HTTP, started and stopped as one.

Start-up follows TF Serving: the config (labels included) is applied first, the
initial versions are loaded, and only then does the REST port open. Afterwards
two pollers pick up new version directories and a changed config file.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tensorflow_serving.config import model_server_config_pb2

from serving.batching import Batcher, BatchingOptions
from serving.config import (
    ModelConfig,
    check_inside_models_dir,
    load_monitoring_config,
    parse_model_server_config,
    resolve_models,
)
from serving.errors import ConfigError, ServingError
from serving.grpcserver import GrpcServer, Services
from serving.httpserver import HttpServer
from serving.metrics import Metrics
from serving.repository import Loader, ModelRepository, load_with_warmup
from serving.rest import ApiOptions, RestApi
from serving.servable import SessionOptions, set_session_options

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_CONFIG_FILE = REPO_ROOT / "serving" / "models.config"
DEFAULT_MODELS_DIR = REPO_ROOT / "models"


@dataclass(frozen=True)
class ServerOptions:
    """Server settings; names follow tensorflow_model_server's flags where one exists."""

    rest_api_port: int = 8501  # 0 picks a free port
    rest_api_host: str = "127.0.0.1"  # gRPC listens on the same address
    port: int | None = None  # gRPC (TF Serving's --port); None: no gRPC; 0 picks a free port
    grpc_port_required: bool = True  # False: a port in use means no gRPC, with a warning
    grpc_max_threads: int = 4 * (os.cpu_count() or 1)
    model_config_file: Path = DEFAULT_MODEL_CONFIG_FILE
    model_config_file_poll_wait_seconds: float = 2.0  # 0 disables polling
    file_system_poll_wait_seconds: float = 1.0  # 0 disables polling
    allow_version_labels_for_unavailable_models: bool = False
    allow_base_path_outside_models_dir: bool = False  # dev-only: see check_inside_models_dir
    models_dir: Path = DEFAULT_MODELS_DIR
    monitoring_config_file: Path | None = None  # None: no Prometheus page, as in TF Serving
    rest_api_enable_cors_support: bool = False
    enable_signature_method_name_check: bool = False
    strict_inputs: bool = False  # dev-only: refuse what TF Serving wraps, rounds or lets run
    enable_batching: bool = False
    batching_parameters_file: Path | None = None  # None: BatchingOptions' defaults
    # ConfigProto thread pools (TF Serving's flags; 0: TensorFlow picks; inter-op < 0: the
    # calling thread runs the graph). The command line defaults to 1 and -1.
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    initial_load_timeout_seconds: float | None = 600.0
    loader: Loader = field(default=load_with_warmup, compare=False, repr=False)


class _Poller:
    """Calls a function every `interval` seconds on a daemon thread until stopped."""

    def __init__(self, name: str, interval: float, function: Callable[[], None]) -> None:
        self._interval = interval
        self._function = function
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        if self._interval > 0:
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._function()
            except Exception:
                log.exception("%s failed", self._thread.name)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


class ModelServer:
    """A TF Serving look-alike on one port. Use start()/stop() or a with-block."""

    def __init__(self, options: ServerOptions | None = None, **overrides: Any) -> None:
        options = replace(options or ServerOptions(), **overrides)
        self.options = replace(
            options,
            model_config_file=Path(options.model_config_file),
            models_dir=Path(options.models_dir),
        )
        self.repository = ModelRepository(
            allow_version_labels_for_unavailable_models=(
                self.options.allow_version_labels_for_unavailable_models
            ),
            loader=self.options.loader,
        )
        self.metrics = Metrics()
        self._http: HttpServer | None = None
        self._grpc: GrpcServer | None = None
        self._batcher: Batcher | None = None
        self._http_thread: threading.Thread | None = None
        self._pollers: list[_Poller] = []
        self._config_lock = threading.Lock()
        self._config_text: str | None = None
        self._config_failed = False
        self._file_applied: str | None = None  # the file's text last applied in full

    # -------------------------------------------------------------- lifecycle
    def start(self) -> ModelServer:
        """Apply the config, load the initial versions, open the port. Raises ConfigError."""
        set_session_options(
            SessionOptions(
                intra_op_parallelism=self.options.tensorflow_intra_op_parallelism,
                inter_op_parallelism=self.options.tensorflow_inter_op_parallelism,
            )
        )
        try:
            prometheus = load_monitoring_config(self.options.monitoring_config_file)
            batching = (
                BatchingOptions.from_file(self.options.batching_parameters_file)
                if self.options.enable_batching
                else None
            )
            self.reload_config()
            if not self.repository.wait_until_settled(self.options.initial_load_timeout_seconds):
                log.warning("Initial model loads still running; serving anyway")
            self._batcher = None if batching is None else Batcher(batching)
            api = RestApi(
                self.repository,
                self.metrics,
                prometheus,
                self._batcher,
                ApiOptions(
                    enable_cors_support=self.options.rest_api_enable_cors_support,
                    enable_signature_method_name_check=(
                        self.options.enable_signature_method_name_check
                    ),
                    strict_inputs=self.options.strict_inputs,
                ),
            )
            self._http = HttpServer(self.options.rest_api_host, self.options.rest_api_port, api)
            self._grpc = self._grpc_server()
        except BaseException:
            if self._http is not None:
                self._http.server_close()
                self._http = None
            self._close_batcher()
            self.repository.close()
            raise
        self._http_thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="http-server",
            daemon=True,  # a forgotten stop() must not keep the process alive
        )
        self._http_thread.start()
        if self._grpc is not None:
            self._grpc.start()
            log.info(
                "Running gRPC ModelServer at %s:%d ...", self.options.rest_api_host, self.grpc_port
            )
        self._pollers = [
            _Poller(
                "file-system-poller",
                self.options.file_system_poll_wait_seconds,
                self.repository.poll_filesystem,
            ),
            _Poller(
                "model-config-poller",
                self.options.model_config_file_poll_wait_seconds,
                self._poll_config,
            ),
        ]
        for poller in self._pollers:
            poller.start()
        models = ", ".join(self.repository.models) or "none"
        metrics = f", metrics at {self.url}{prometheus.path}" if prometheus.enabled else ""
        if batching is not None:
            log.info("Batching requests: %s", batching)
        log.info("Exporting HTTP/REST API at %s (models: %s%s)", self.url, models, metrics)
        return self

    def stop(self) -> None:
        """Stop polling, finish requests in flight, close the port and unload models."""
        for poller in self._pollers:
            poller.stop()
        self._pollers = []
        if self._grpc is not None:
            self._grpc.stop()
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.close_idle_connections()
            self._http.server_close()
            self._http.join_handlers(timeout=30)
            if self._http_thread is not None:
                self._http_thread.join()
            self._http = None
        self._close_batcher()
        self.repository.close()
        log.info("Model server stopped")

    def _close_batcher(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._http is None:
            raise RuntimeError("The server is not running")
        return int(self._http.server_address[1])

    @property
    def grpc_port(self) -> int:
        if self._grpc is None:
            raise RuntimeError("The gRPC server is not running")
        return self._grpc.port

    @property
    def grpc_address(self) -> str:
        """host:port for grpc.insecure_channel."""
        host = self.options.rest_api_host
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.grpc_port}"

    def _grpc_server(self) -> GrpcServer | None:
        if self.options.port is None:
            return None
        services = Services(
            self.repository,
            self.reload_config_proto,
            self._batcher,
            method_check=self.options.enable_signature_method_name_check,
            metrics=self.metrics,
        )
        try:
            return GrpcServer(
                self.options.rest_api_host,
                self.options.port,
                services,
                self.options.grpc_max_threads,
            )
        except OSError as exc:
            if self.options.grpc_port_required:
                raise
            log.warning("%s; serving without gRPC (pass --port to choose another port)", exc)
            return None

    @property
    def url(self) -> str:
        host = self.options.rest_api_host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    # ----------------------------------------------------------------- config
    def reload_config(self, config_text: str | None = None) -> None:
        """Apply the config file (or the given text) now, as a whole, or raise ConfigError.

        A rejected config leaves the previous one in force, as in TF Serving.
        """
        with self._config_lock:
            text = self._read_config() if config_text is None else config_text
            try:
                self.repository.apply_config(self._resolve(text))
            except ConfigError:
                if config_text is None:
                    self._config_text, self._config_failed = text, True
                raise
            if config_text is None:
                self._config_text, self._config_failed = text, False
                self._file_applied = text

    def reload_config_proto(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """ModelService.HandleReloadConfigRequest: replace the whole config with `config`.

        Like ServerCore::ReloadConfig, it waits for models new to the config to become
        available (UNKNOWN "N model(s) did not become available" otherwise). The config
        file poller, if on, applies its file again at its next poll, as TF Serving's
        poller reloads the file every period.
        """
        with self._config_lock:
            before = set(self.repository.models)
            models = self._resolve_proto(config)
            self.repository.apply_config(models)
            self._config_text = None  # the next poll re-applies the file
        new = [model.name for model in models if model.name not in before]
        if not new:
            return
        self.repository.wait_until_settled(self.options.initial_load_timeout_seconds)
        missing = []
        for name in new:
            states = {s.version: s for s in self.repository.status_or_empty(name)}
            if not any(s.state.value == "AVAILABLE" for s in states.values()):
                latest = max(states) if states else None
                detail = ""
                if latest is not None and states[latest].error_code != "OK":
                    error = states[latest]
                    detail = f" due to error: {error.error_code}: {error.error_message}"
                version = "Latest" if latest is None else str(latest)
                missing.append(f"{{name: {name} version: {version}{detail}}}, ")
        if missing:
            raise ServingError(
                "UNKNOWN",
                f"{len(missing)} model(s) did not become available: {{{''.join(missing)}}}",
            )

    def _read_config(self) -> str:
        path = self.options.model_config_file
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("NOT_FOUND", f"Cannot read model config file {path}: {exc}") from exc

    def _resolve(self, text: str) -> tuple[ModelConfig, ...]:
        return self._resolve_proto(parse_model_server_config(text))

    def _resolve_proto(
        self, config: model_server_config_pb2.ModelServerConfig
    ) -> tuple[ModelConfig, ...]:
        models = resolve_models(
            config,
            config_dir=self.options.model_config_file.resolve().parent,
            models_dir=self.options.models_dir,
        )
        if not self.options.allow_base_path_outside_models_dir:
            check_inside_models_dir(models, self.options.models_dir)
        return models

    def _restore(self, models: tuple[ModelConfig, ...]) -> None:
        """Bring back the file's config after another one replaced it, in two steps.

        A reload (over gRPC, say) may have unloaded the versions the file's labels name,
        and a label may only point at an AVAILABLE version: applied whole, the file would
        be refused on every poll until a restart. So its versions load first, under the
        labels that can stay, and then the file applies whole.
        """
        self.repository.apply_models_first(models)
        self.repository.wait_until_settled(self.options.initial_load_timeout_seconds)
        self.repository.apply_config(models)

    def _poll_config(self) -> None:
        # Like TF Serving, a rejected config is retried on every poll; it is logged once.
        with self._config_lock:
            try:
                text = self._read_config()
            except ConfigError as exc:
                if not self._config_failed:
                    log.error("%s; keeping the previous config", exc.message)
                self._config_failed = True
                return
            changed = text != self._config_text
            if not changed and not self._config_failed:
                return
            try:
                models = self._resolve(text)
                try:
                    self.repository.apply_config(models)
                except ConfigError:
                    if text != self._file_applied:
                        raise
                    self._restore(models)
            except ConfigError as exc:
                if changed or not self._config_failed:
                    log.error(
                        "Rejected model config %s: %s; keeping the previous config",
                        self.options.model_config_file,
                        exc,
                    )
                self._config_failed = True
            else:
                log.info("Reloaded model config %s", self.options.model_config_file)
                self._config_failed = False
                self._file_applied = text
            self._config_text = text
