"""`python -m serving`: the development model server, with tensorflow_model_server's flags.

For machines without Docker. It serves the same models.config, the same REST API
(--rest_api_port) and the same gRPC services (--port) as TensorFlow Serving, and stops
cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from recognizer import logs
from recognizer.env import FALSE, TRUE, SettingsError
from serving.settings import EnvDefaults

log = logging.getLogger("serving")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GRPC_PORT = 8500
# TF Serving leaves both to TensorFlow (0). Here a request's thread runs its own graph
# on one core: on 2 cores the thread hand-offs cost more than this small model, and
# concurrent requests (or batches) still use every core (docs/performance.md).
DEFAULT_INTRA_OP = 1
DEFAULT_INTER_OP = -1


class StopSignals:
    """SIGINT and SIGTERM, noted from the moment this is made; `wait()` returns once one came.

    The handler only appends to a list. A handler that takes a lock (threading.Event.set)
    deadlocks when a second signal lands while the first handler holds it, and `make demo`'s
    Ctrl-C sends exactly that: SIGINT to the group, then bash's SIGTERM. 1 stop in 10 hung.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._note)

    def _note(self, signum: int, _frame: object) -> None:
        self.received.append(signum)

    def wait(self) -> int:
        """The first signal's number. Sleeps in short slices: a signal may reach another
        thread (gRPC's, TensorFlow's), and Python runs the handler only when the main
        thread next wakes; with a plain wait, gRPC serving once kept the server from stopping.
        """
        while not self.received:
            time.sleep(0.2)
        return self.received[0]


def _bool(text: str) -> bool:
    """TF Serving spells booleans --flag, --flag=true or --flag=false; ours, as settings."""
    value = text.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def build_parser(env: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    """Flags, with MODEL_SERVER_PORT and MODELS_DIR as environment defaults; SettingsError
    names a malformed one."""
    defaults = EnvDefaults.from_env(env)
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="Development model server speaking TensorFlow Serving's REST API.",
    )
    parser.add_argument(
        "--rest_api_port",
        type=int,
        default=defaults.rest_api_port,
        help="REST port (default: $MODEL_SERVER_PORT or 8501; 0 picks a free port)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"gRPC port, as TF Serving's --port (default: {DEFAULT_GRPC_PORT}, skipped with a "
        "warning when taken; a port given here must bind; 0 picks a free port)",
    )
    parser.add_argument(
        "--rest_api_host", default="127.0.0.1", help="address to bind (REST and gRPC)"
    )
    parser.add_argument(
        "--model_config_file",
        type=Path,
        default=REPO_ROOT / "serving" / "models.config",
        help="ModelServerConfig text proto (default: serving/models.config)",
    )
    parser.add_argument(
        "--model_config_file_poll_wait_seconds",
        type=float,
        default=2.0,
        help="seconds between config file polls; 0 disables",
    )
    parser.add_argument(
        "--file_system_poll_wait_seconds",
        type=float,
        default=1.0,
        help="seconds between version directory scans; 0 disables",
    )
    parser.add_argument(
        "--allow_version_labels_for_unavailable_models",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="let a new label point at a version that is not loaded yet",
    )
    parser.add_argument(
        "--allow_base_path_outside_models_dir",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="dev-only: load a base path outside --models_dir (refused by default, so a "
        "config reload cannot load a SavedModel from anywhere on the disk)",
    )
    parser.add_argument(
        "--models_dir",
        type=Path,
        default=defaults.models_dir,
        help="local directory standing in for /models in base paths (default: $MODELS_DIR "
        "or <repo>/models)",
    )
    parser.add_argument(
        "--monitoring_config_file",
        type=Path,
        default=None,
        help="MonitoringConfig text proto, e.g. serving/monitoring.config (default: none, "
        "so no Prometheus page, as in TF Serving)",
    )
    parser.add_argument(
        "--rest_api_enable_cors_support",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="add CORS headers (Access-Control-Allow-*) to REST API responses",
    )
    parser.add_argument(
        "--enable_signature_method_name_check",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="require predict/classify/regress method names on the signatures used",
    )
    parser.add_argument(
        "--strict_inputs",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="dev server only, stricter than TF Serving: refuse integers out of an input's "
        "range, numbers a float input cannot hold and shapes the signature does not accept "
        "(TF Serving wraps, rounds and lets the graph decide)",
    )
    parser.add_argument(
        "--enable_batching",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="merge concurrent predict requests into batched model calls",
    )
    parser.add_argument(
        "--batching_parameters_file",
        type=Path,
        default=None,
        help="BatchingParameters text proto, e.g. serving/batching.config (default: "
        "BasicBatchScheduler's defaults); used with --enable_batching",
    )
    parser.add_argument(
        "--tensorflow_intra_op_parallelism",
        type=int,
        default=DEFAULT_INTRA_OP,
        help="threads one TensorFlow op may use, as in TF Serving (0: one per core; "
        f"default here: {DEFAULT_INTRA_OP})",
    )
    parser.add_argument(
        "--tensorflow_inter_op_parallelism",
        type=int,
        default=DEFAULT_INTER_OP,
        help="threads running independent ops, as in TF Serving (0: one per core; negative: "
        f"the request's own thread runs the graph; default here: {DEFAULT_INTER_OP})",
    )
    parser.add_argument("--log_level", default="INFO", help="Python logging level")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except SettingsError as refused:
        for problem in refused.problems:  # one line each, as argparse says a bad flag
            print(f"python -m serving: error: {problem}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    # One JSON entry per line on stderr, with the calling request's id and trace
    # (recognizer/logs.py): the function's format, so one query reads both.
    logs.configure("model-server", args.log_level.upper(), sys.stderr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

    stopping = StopSignals()

    from serving.errors import ServingError
    from serving.server import ModelServer, ServerOptions

    options = ServerOptions(
        rest_api_port=args.rest_api_port,
        rest_api_host=args.rest_api_host,
        port=DEFAULT_GRPC_PORT if args.port is None else args.port,
        grpc_port_required=args.port is not None,
        model_config_file=args.model_config_file,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        allow_base_path_outside_models_dir=args.allow_base_path_outside_models_dir,
        models_dir=args.models_dir,
        monitoring_config_file=args.monitoring_config_file,
        rest_api_enable_cors_support=args.rest_api_enable_cors_support,
        enable_signature_method_name_check=args.enable_signature_method_name_check,
        strict_inputs=args.strict_inputs,
        enable_batching=args.enable_batching,
        batching_parameters_file=args.batching_parameters_file,
        tensorflow_intra_op_parallelism=args.tensorflow_intra_op_parallelism,
        tensorflow_inter_op_parallelism=args.tensorflow_inter_op_parallelism,
    )
    server = ModelServer(options)
    try:
        server.start()
    except (ServingError, OSError) as exc:
        log.error("Failed to start server. Error: %s", exc)
        return 1
    stopping.wait()
    log.info("Shutting down")
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
