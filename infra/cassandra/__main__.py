"""Local Apache Cassandra: `python -m infra.cassandra fetch|run|migrate` (the README, Cassandra).

`migrate` copies the released layout into the new tables of a running deployment
(infra/cassandra/migrate.py).

`run` starts 1 or 3 nodes, applies infra/cassandra/schema.cql (replication factor = nodes),
prints the contact points, and stays in the foreground until Ctrl-C or SIGTERM, when it
drains every node and exits; no JVM outlives it (infra/cassandra/local.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from recognizer.cassandra_store import DRIVER_ERRORS, CassandraSettings
from recognizer.env import Reader, SettingsError

from . import migrate
from .apply_schema import SCHEMA, apply, render, split_statements
from .local import (
    DATACENTER,
    HEAP_SIZE,
    LauncherError,
    LocalCluster,
    cassandra_lib,
    java_executable,
)


class _Stop(Exception):
    """Raised by the signal handler so the `finally` that drains the nodes runs."""


def schema_statements(keyspace: str, nodes: int) -> list[str]:
    """schema.cql for `keyspace`, replicated to every node of a local cluster."""
    replication = f"{{'class': 'NetworkTopologyStrategy', '{DATACENTER}': {nodes}}}"
    text = SCHEMA.read_text(encoding="utf-8")
    return render(split_statements(text), keyspace=keyspace, replication=replication)


def apply_local_schema(cluster: LocalCluster, keyspace: str = "mnist") -> None:
    """Apply the schema through the first node (idempotent: IF NOT EXISTS throughout)."""
    first = cluster.members[0]
    settings = CassandraSettings(
        contact_points=((first.address, first.native_port),), keyspace=keyspace
    )
    apply(schema_statements(keyspace, cluster.nodes), settings, wait=30.0, report=lambda _: None)


def launcher_settings(env: Mapping[str, str]) -> tuple[int, str]:
    """CASSANDRA_NATIVE_PORT and CASSANDRA_MAX_HEAP_SIZE, read with the project's one reader."""
    read = Reader(env)
    port = read.whole("CASSANDRA_NATIVE_PORT", 9042, 1, 65535)
    heap = read.text("CASSANDRA_MAX_HEAP_SIZE", "512M", HEAP_SIZE, "a heap size such as 512M or 1G")
    try:
        read.check()
    except SettingsError as error:
        raise LauncherError(str(error)) from None
    return port, heap


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    native_port, heap = launcher_settings(env)
    cluster = LocalCluster(
        root=args.dir,
        nodes=args.nodes,
        native_port=args.native_port or native_port,
        durable=not args.test,
        heap=heap,
        env=env,
        report=lambda line: print(line, flush=True),
    )

    signums = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def stop(signum: int, frame: FrameType | None) -> None:
        # Ignore the rest first: `make demo`'s Ctrl-C is SIGINT to the group and then bash's
        # SIGTERM, and a second _Stop raised outside the try would skip the drain. One that
        # lands before these lines raises inside this handler, still within the try.
        for other in signums:
            signal.signal(other, signal.SIG_IGN)
        raise _Stop

    for signum in signums:
        signal.signal(signum, stop)
    try:
        cluster.start()
        apply_local_schema(cluster, args.keyspace)
        print(
            f"Cassandra is ready: CASSANDRA_CONTACT_POINTS={cluster.contact_points} "
            f"(keyspace {args.keyspace}, replication factor {args.nodes}, data in {cluster.root})",
            flush=True,
        )
        if args.ready_file:
            args.ready_file.write_text(cluster.contact_points + "\n", encoding="utf-8")
        while True:  # not signal.pause(): a signal may reach a driver thread instead, and
            time.sleep(0.2)  # the handler runs only when the main thread wakes
    except _Stop:
        pass
    finally:
        for signum in signums:
            signal.signal(signum, signal.SIG_IGN)  # let the drain finish
        print("Stopping Cassandra (draining) ...", flush=True)
        cluster.stop()
        if args.ready_file:
            args.ready_file.unlink(missing_ok=True)
    return 0


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    parser = argparse.ArgumentParser(prog="python -m infra.cassandra", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="check Java 17 and resolve Cassandra's jars (once)")
    start = commands.add_parser("run", help="start nodes in the foreground until Ctrl-C")
    start.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    start.add_argument("--dir", type=Path, default=Path("var/cassandra"), help="data (%(default)s)")
    start.add_argument("--native-port", type=int, help="CQL port (CASSANDRA_NATIVE_PORT or 9042)")
    start.add_argument("--keyspace", default="mnist")
    start.add_argument("--test", action="store_true", help="no fsync: for data nobody keeps")
    start.add_argument("--ready-file", type=Path, help="written with the contact points once ready")
    commands.add_parser(
        "migrate",
        help="copy the released layout into the new tables (CASSANDRA_*; --help for more)",
        add_help=False,
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "migrate":
        return migrate.main(rest, env)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        java_executable(env)
        lib = cassandra_lib(env)
        if args.command == "fetch":
            print(f"Cassandra's jars: {lib}")
            return 0
        return run(args, env)
    except LauncherError as exc:
        print(f"infra.cassandra: {exc}", file=sys.stderr)
        return 1
    except DRIVER_ERRORS as exc:
        print(f"infra.cassandra: the schema could not be applied: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
