"""Apply infra/cassandra/schema.cql idempotently: `python -m infra.cassandra.apply_schema`.

Connects with the same CASSANDRA_* settings as the function (see
function/recognizer/cassandra_store.py). Every statement in the file is IF NOT EXISTS, so
running this again is harmless. --replication replaces the keyspace's replication map
(only when the keyspace is created: an existing keyspace needs ALTER KEYSPACE).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cassandra import OperationTimedOut, WriteTimeout
from cassandra.cluster import NoHostAvailable

from recognizer.cassandra_store import DRIVER_ERRORS, CassandraSettings, build_cluster

SCHEMA = Path(__file__).with_name("schema.cql")
SCHEMA_KEYSPACE = "mnist"  # the keyspace name written in schema.cql
_KEYSPACE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")


def split_statements(text: str) -> list[str]:
    """CQL statements without comments; `;` inside strings, quoted names or comments is kept."""
    statements: list[str] = []
    current, i, n = "", 0, len(text)
    while i < n:
        pair = text[i : i + 2]
        if pair in ("--", "//"):  # line comment: drop it and the blanks before it
            current = current.rstrip(" \t")
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif pair == "/*":
            end = text.find("*/", i + 2)
            if end < 0:
                raise ValueError("unterminated /* comment in schema")
            current, i = current + " ", end + 2
        elif pair == "$$" or text[i] in "'\"":  # string, quoted name: copy verbatim
            quote = "$$" if pair == "$$" else text[i]
            end = i + len(quote)
            while True:
                end = text.find(quote, end)
                if end < 0:
                    raise ValueError(f"unterminated {quote} quote in schema")
                if quote != "$$" and text[end + 1 : end + 2] == quote:  # doubled: escaped
                    end += 2
                    continue
                break
            current, i = current + text[i : end + len(quote)], end + len(quote)
        elif text[i] == ";":
            if current.strip():
                statements.append(current.strip())
            current, i = "", i + 1
        elif text[i] == "\n" and (not current.strip() or current.endswith("\n")):
            i += 1  # no blank lines where comments were
        else:
            current, i = current + text[i], i + 1
    if current.strip():
        statements.append(current.strip())
    return statements


def replication_map(text: str) -> str:
    """Validate a replication map such as "{'class': 'NetworkTopologyStrategy', 'dc1': 3}"."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, dict) or not isinstance(value.get("class"), str):
        raise ValueError(
            f"replication {text!r} is not a map with a 'class', "
            "e.g. {'class': 'NetworkTopologyStrategy', 'dc1': 3}"
        )
    parts = []
    for key, item in value.items():
        if not isinstance(key, str) or isinstance(item, bool) or not isinstance(item, str | int):
            raise ValueError(
                f"replication entry {key!r}: {item!r} must map a name to a string or int"
            )
        parts.append(f"{_quote(key)}: {item if isinstance(item, int) else _quote(item)}")
    return "{" + ", ".join(parts) + "}"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def render(
    statements: Sequence[str], *, keyspace: str = SCHEMA_KEYSPACE, replication: str | None = None
) -> list[str]:
    """The schema's statements for `keyspace`, with `replication` (a CQL map) if given."""
    if not _KEYSPACE_RE.fullmatch(keyspace):
        raise ValueError(f"keyspace {keyspace!r}: use letters, digits and _ (at most 48)")
    create_keyspace = re.compile(
        rf"(?is)^(CREATE\s+KEYSPACE\s+IF\s+NOT\s+EXISTS\s+){SCHEMA_KEYSPACE}\b"
    )
    out = []
    for statement in statements:
        if create_keyspace.match(statement):
            statement = create_keyspace.sub(rf"\g<1>{keyspace}", statement)
            if replication is not None:
                statement, count = re.subn(
                    r"(?is)(\breplication\s*=\s*)\{[^}]*\}",
                    lambda m: m.group(1) + replication,
                    statement,
                    count=1,
                )
                if count != 1:
                    raise ValueError("CREATE KEYSPACE in the schema has no replication map")
        else:
            statement = re.sub(rf"\b{SCHEMA_KEYSPACE}\.", f"{keyspace}.", statement)
        out.append(statement)
    return out


def apply(
    statements: Sequence[str],
    settings: CassandraSettings,
    *,
    cluster_factory: Callable[[CassandraSettings], Any] = build_cluster,
    timeout: float = 60.0,
    wait: float = 0.0,
    report: Callable[[str], None] = print,
) -> None:
    """Run the statements in order; retry connecting for up to `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        cluster = None
        try:
            cluster = cluster_factory(settings)
            session = cluster.connect()
            break
        except DRIVER_ERRORS as exc:
            if cluster is not None:
                cluster.shutdown()
            if time.monotonic() >= deadline:
                raise
            report(f"Cassandra not reachable yet ({type(exc).__name__}); retrying")
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    try:
        # Every statement through one coordinator: another node may not know yet the
        # keyspace the previous statement made (seen on a three-node ring).
        coordinator = cluster.get_control_connection_host()
        for statement in statements:
            report(statement.splitlines()[0] + (" ..." if "\n" in statement else ""))
            _execute(session, statement, timeout, coordinator, report)
    finally:
        cluster.shutdown()


def _execute(
    session: Any, statement: str, timeout: float, host: Any, report: Callable[[str], None]
) -> None:
    """Run one statement (DDL waits for schema agreement), again while the coordinator is
    marked down or the request times out, within `timeout`: a node of a loaded machine
    misses heartbeats for a while (seen on a three-node ring on 2 cores), and the layout's
    INSERT ... IF NOT EXISTS (a lightweight transaction) can time out. Every statement of
    the schema is IF NOT EXISTS, so running one again is safe."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            session.execute(statement, timeout=timeout, host=host)
            return
        except (NoHostAvailable, OperationTimedOut, WriteTimeout) as exc:
            if time.monotonic() >= deadline:
                raise
            report(f"Cassandra did not answer ({type(exc).__name__}); trying again")
            time.sleep(2.0)


def _replication_arg(text: str) -> str:
    try:
        return replication_map(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m infra.cassandra.apply_schema", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--schema", type=Path, default=SCHEMA, help="CQL file (default: %(default)s)"
    )
    parser.add_argument(
        "--keyspace", help="keyspace to create (default: CASSANDRA_KEYSPACE or mnist)"
    )
    parser.add_argument(
        "--replication",
        type=_replication_arg,
        help="""replication map, e.g. "{'class': 'NetworkTopologyStrategy', 'dc1': 3}" """,
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the statements, connect to nothing"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per statement (60)")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to retry connecting (0)")
    args = parser.parse_args(argv)

    keyspace = args.keyspace or environ.get("CASSANDRA_KEYSPACE", "").strip() or SCHEMA_KEYSPACE
    try:
        statements = render(
            split_statements(args.schema.read_text(encoding="utf-8")),
            keyspace=keyspace,
            replication=args.replication,
        )
    except (OSError, ValueError) as exc:
        print(f"apply_schema: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print("\n\n".join(f"{statement};" for statement in statements))
        return 0
    try:
        settings = CassandraSettings.from_env(environ)
    except ValueError as exc:
        print(f"apply_schema: {exc}", file=sys.stderr)
        return 2
    try:
        apply(statements, settings, timeout=args.timeout, wait=args.wait)
    except DRIVER_ERRORS as exc:
        print(f"apply_schema: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"schema applied: keyspace {keyspace}, {len(statements)} statements")
    return 0


if __name__ == "__main__":
    sys.exit(main())
