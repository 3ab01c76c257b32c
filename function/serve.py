"""Serve the function as `functions-framework --target recognize` does, with shared metrics.

gunicorn forks WORKERS processes and a scrape of /metrics reaches one of them. So that it
answers for all of them (recognizer/metrics.py), this prepares PROMETHEUS_MULTIPROC_DIR
before anything imports prometheus_client and before the fork, empties it of a previous
run's files, and gives gunicorn a child_exit hook that marks a dead worker, and its own
worker class (recognizer/worker.py: request heads read without a thread, recycling past a
memory mark). The rest is functions-framework's own gunicorn application, unchanged.

    python serve.py --host 0.0.0.0 --port 8080      (from function/, as in the container)
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

from recognizer import env, worker
from recognizer.config import Settings

SOURCE = Path(__file__).with_name("main.py")
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def prepare_metrics_dir(configured: str) -> Path:
    """The directory the workers share: the configured one emptied, or a new one removed
    at exit. Stale files of a previous run would add its counts to this one's."""
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
    else:
        directory = Path(tempfile.mkdtemp(prefix="recognizer-metrics-"))
        atexit.register(_remove_from, os.getpid(), directory)
        os.environ[MULTIPROC_DIR] = str(directory)
    return directory


def _remove_from(pid: int, directory: Path) -> None:
    """At the master's exit only: a worker inherits the hook, and one that leaves alone (a
    recycled worker, recognizer/worker.py) removed the directory from under the others."""
    if os.getpid() == pid:
        shutil.rmtree(directory, ignore_errors=True)


def child_exit(server: object, worker: object) -> None:
    """gunicorn's hook, in the master, after a worker exits for any reason."""
    from recognizer import metrics

    metrics.mark_process_dead(worker.pid)  # type: ignore[attr-defined]


def main() -> None:
    settings = env.Reader(os.environ)
    port = settings.whole("PORT", 8080, 1, 65535)
    directory = settings.text(MULTIPROC_DIR, "")
    try:
        settings.check()
        budgets = Settings.from_env()  # main.py reads them again in each worker
    except env.SettingsError as error:
        sys.exit(f"the function cannot start: {error}")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")  # as functions-framework
    parser.add_argument("--port", type=int, default=port)
    args = parser.parse_args()
    prepare_metrics_dir(directory)
    # Imported after the directory is set: prometheus_client reads it at import.
    import functions_framework
    from functions_framework._http.gunicorn import GunicornApplication  # pinned version

    app = functions_framework.create_app("recognize", str(SOURCE))
    # Heads read without a thread, and recycling past a memory mark (recognizer/worker.py).
    worker_class = worker.configured(budgets.client_header_seconds, budgets.recycle_bytes)
    GunicornApplication(
        app, args.host, args.port, False, child_exit=child_exit, worker_class=worker_class
    ).run()


if __name__ == "__main__":
    main()
