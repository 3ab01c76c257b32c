"""`python -m infra.rollout`: the shell around the plans -- files, model server, gRPC, output.

    status [--json]        versions on disk, served, labelled, loaded; per-version log figures
    canary <version>       load a version, wait until AVAILABLE, point `canary` at it
    promote                point `stable` at the canary's version
    rollback               point `canary` back at stable's version, unload the rejected one
    rollback --stable      point `stable` (and a canary that followed it) at the previous version
    analyze [--apply]      canary against stable over the store: promote, roll back or wait

`analyze` exits with a status a pipeline can branch on: 0 promote (recommended, or done
with --apply), 3 wait (not enough evidence yet; nothing changed), 4 roll back
(recommended, or done with --apply); 1 is an error (no canary, an unreadable store, a
refused change) and 2 a usage error. Its rules are in infra/rollout/analysis.py.

Each step re-reads models.config where every replica polls it (a file, a ConfigMap or a
Cloud Storage object: infra/rollout/shared.py), checks nobody else changed it, validates
the new state (disk, signature, TF Serving's label rule on every replica, the server's
own config rules), writes it atomically, optionally pushes it over gRPC, and waits until
every replica reports it before the next step (infra/rollout/fleet.py). Defaults come
from the same variables as the function.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

from infra.rollout import analysis, figures, plan, report
from infra.rollout.errors import RolloutError
from infra.rollout.fleet import Fleet, replica_status, replicas_setting
from infra.rollout.plan import Facts, Step
from infra.rollout.push import push_config
from infra.rollout.served import (
    ModelServerConfig,
    Served,
    model_entry,
    parse,
    render,
    served_of,
    with_served,
)
from infra.rollout.server import ServerView
from infra.rollout.shared import LocalFile, SharedConfig, shared_config
from infra.rollout.signature import check_version, versions_on_disk
from recognizer import drift
from recognizer.config import Settings
from recognizer.env import SettingsError
from serving.config import resolve_models
from serving.errors import ConfigError
from serving.settings import EnvDefaults

REPO_ROOT = Path(__file__).resolve().parents[2]
EXIT_STATUS = {analysis.PROMOTE: 0, analysis.WAIT: 3, analysis.ROLLBACK: 4}
EXIT_HELP = """
exit status:
  0  promote: recommended, or done with --apply
  3  wait: not enough evidence yet; nothing changed
  4  roll back: recommended, or done with --apply
  1  an error (no canary, an unreadable store, a refused or failed change)
  2  a usage error
"""


@dataclass
class Deployment:
    """One model's config file, version directories and model server."""

    config_file: Path
    models_dir: Path
    model: str
    server: ServerView
    grpc: str | None
    timeout: float
    poll_seconds: float
    drain_seconds: float
    say: Callable[[str], None] = print
    # Where the replicas read the config; the local file `config_file` when not given.
    shared: SharedConfig | None = None
    # Every replica; only `server` when not given.
    fleet: Fleet | None = None
    # The replicas' --model_config_file_poll_wait_seconds: one lagging longer is named.
    config_poll_seconds: float = 0.0
    convergence: list[tuple[str, float, list]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.shared is None:
            self.shared = LocalFile(self.config_file)
        if self.fleet is None:
            self.fleet = Fleet("", self.server.url, self.model, {self.server.url: self.server})

    def read(self) -> tuple[str, ModelServerConfig]:
        assert self.shared is not None
        text = self.shared.read()
        return text, parse(text)

    def facts(self, config: ModelServerConfig) -> Facts:
        assert self.fleet is not None
        return Facts(self.on_disk(config), self.fleet.available_everywhere())

    def on_disk(self, config: ModelServerConfig) -> dict[int, list[str]]:
        base_path = model_entry(config, self.model).base_path
        found = versions_on_disk(base_path, self.config_file, self.models_dir)
        return {version: check_version(directory) for version, directory in found.items()}

    def apply(self, steps: Sequence[Step]) -> None:
        """Write each step's state, validated, and wait for the server to reach it."""
        if not steps:
            self.say("nothing to do")
            return
        expected = served_of(self.read()[1], self.model)
        for number, step in enumerate(steps, 1):
            self.say(f"step {number}/{len(steps)}: {step.why}")
            if step.drain_first and self.drain_seconds > 0:
                # The function caches label -> version; no endpoint tells when every cache
                # has expired, so wait longer than MODEL_LABEL_CACHE_SECONDS.
                self.say(f"  waiting {self.drain_seconds:g} s for label caches to expire")
                time.sleep(self.drain_seconds)
            text, config = self.read()
            current = served_of(config, self.model)
            if current != expected:
                raise RolloutError(
                    f"{self.shared} changed during the rollout (now {current.describe()}); "
                    "check it and run the command again"
                )
            updated = self.validated(config, current, step.target)
            self.shared.write(render(updated, text))
            if self.grpc:
                try:
                    push_config(self.grpc, updated, self.timeout)
                except RolloutError as error:
                    self.shared.write(text)  # the file and server agree again
                    raise RolloutError(f"{error} ({self.shared} restored)") from None
            try:
                took, replicas = self.fleet.wait(
                    on_every_replica(current, step.target),
                    self.timeout,
                    self.poll_seconds,
                    self.config_poll_seconds,
                    self.say,
                )
            except RolloutError as error:
                raise RolloutError(
                    f"{error}. The config is written; a model server that rejects a config "
                    "keeps the previous one and says why in its log"
                ) from None
            self.convergence.append((step.why, took, replicas))
            slowest = ", ".join(
                f"{r.url} {r.converged_after:.1f} s" for r in replicas if r.converged_after
            )
            self.say(
                f"  converged on {len(replicas)} replica(s) in {took:.1f} s"
                + (f" ({slowest})" if slowest else "")
                + f": {step.target.describe()}"
            )
            expected = step.target

    def validated(
        self, config: ModelServerConfig, current: Served, target: Served
    ) -> ModelServerConfig:
        """The config to write for `target`, or RolloutError saying why it must not be."""
        found = plan.problems(current, target, self.facts(config))
        updated = with_served(config, self.model, target)
        try:
            resolve_models(
                updated, config_dir=self.config_file.resolve().parent, models_dir=self.models_dir
            )
        except ConfigError as error:
            found.append(error.message)
        if found:
            raise RolloutError("refused, nothing written: " + "; ".join(found))
        return updated


def on_every_replica(current: Served, target: Served) -> Callable[[ServerView], str | None]:
    """A fleet check: `converged` per replica, each remembering its own load attempts."""
    checks: dict[str, Callable[[], str | None]] = {}

    def check(view: ServerView) -> str | None:
        if view.url not in checks:
            checks[view.url] = converged(view, current, target)
        return checks[view.url]()

    return check


def converged(server: ServerView, current: Served, target: Served) -> Callable[[], str | None]:
    """A check for one replica: None once it serves `target`, else what is missing."""
    attempted: set[int] = set()

    def check() -> str | None:
        states = server.versions()
        for version in sorted(target.versions - current.versions):
            state = states.get(version)
            if state is not None and state.state in ("START", "LOADING"):
                attempted.add(version)
            if state is not None and state.state == "END" and version in attempted:
                raise RolloutError(f"version {version} failed to load: {state.error or 'END'}")
            if state is None or state.state != "AVAILABLE":
                shown = "unknown" if state is None else state.state
                return f"version {version} is {shown} on the model server, not AVAILABLE"
        for version in sorted(current.versions - target.versions):
            if version in states and states[version].state == "AVAILABLE":
                return f"version {version} is still loaded"
        for label, version in sorted(target.labels.items()):
            if current.labels.get(label) != version:
                serving = server.label_version(label)
                if serving != version:
                    return f"label {label!r} serves version {serving}, not {version}"
        return None

    return check


def replicas(deployment: Deployment, served: Served, labels: Sequence[str]) -> list[dict]:
    """Each replica's state against the config; a discovery failure is one entry saying so."""
    assert deployment.fleet is not None
    try:
        members = deployment.fleet.members()
    except RolloutError as error:
        return [{"url": deployment.fleet.replicas, "reachable": False, "error": str(error),
                 "agrees": False}]  # fmt: skip
    return [replica_status(member, served, labels) for member in members]


def _replica_lines(found: list[dict]) -> str:
    lines = [f"replicas: {sum(r['agrees'] for r in found)} of {len(found)} serve the config"]
    for replica in found:
        if not replica["reachable"]:
            lines.append(f"  {replica['url']}: {replica['error']}")
        elif replica["agrees"]:
            lines.append(f"  {replica['url']}: agrees")
        else:
            lines.append(f"  {replica['url']}: " + "; ".join(replica["disagreements"]))
    return "\n".join(lines)


def status(deployment: Deployment, args: argparse.Namespace) -> str:
    _, config = deployment.read()
    served = served_of(config, deployment.model)
    labels = sorted(set(served.labels) | {args.stable_label, args.canary_label})
    if args.json:  # the store's figures; an unreadable store is an error, not a line
        _, figures = _window_figures(args)
        document = report.status_json(figures, served, _reference(served, args.stable_label))
        if args.replicas_state:
            document["replicas"] = replicas(deployment, served, labels)
        return json.dumps(document)
    try:
        server_versions: dict | str = deployment.server.versions()
        server_labels = {label: deployment.server.label_version(label) for label in labels}
    except RolloutError as error:
        server_versions, server_labels = str(error), {}
    try:
        source, figures = _window_figures(args)
    except RolloutError as error:
        source, figures = _log_source(args), str(error)
    text = report.render_status(
        report.StatusFacts(
            model=deployment.model,
            config_file=str(deployment.shared),
            served=served,
            on_disk=deployment.on_disk(config),
            server_url=deployment.server.url,
            server_versions=server_versions,
            server_labels=server_labels,
            log_source=source,
            figures=figures,
            window_hours=args.window_hours,
            low_confidence=args.low_confidence,
            reference=_reference(served, args.stable_label),
        )
    )
    return text + "\n" + _replica_lines(replicas(deployment, served, labels))


def _reference(served: Served, stable_label: str) -> tuple[int, drift.Profile] | None:
    """Drift's reference: the profile of the version models.config gives the stable label."""
    version = served.labels.get(stable_label)
    profile = None if version is None else drift.load_profile(version)
    return None if version is None or profile is None else (version, profile)


def analyze(deployment: Deployment, args: argparse.Namespace) -> int:
    """Decide on the canary from the store; with --apply, promote or roll back as decided."""
    _, config = deployment.read()
    served = served_of(config, deployment.model)
    stable = served.labels.get(args.stable_label)
    canary = served.labels.get(args.canary_label)
    if stable is None:
        raise RolloutError(f"there is no {args.stable_label!r} label")
    if canary is None or canary == stable:
        raise RolloutError(
            f"no canary to analyze: {args.canary_label!r} points at "
            + ("nothing" if canary is None else f"stable's version {stable}")
            + "; start one with `canary <version>`"
        )
    source, figures = _window_figures(args)
    by_version = {f.version: f for f in figures}
    # The flags are the thresholds' fields by name (see _analyze_parser).
    thresholds = analysis.Thresholds(
        **{field.name: getattr(args, field.name) for field in fields(analysis.Thresholds)}
    )
    decision = analysis.decide(by_version.get(stable), by_version.get(canary), thresholds)
    facts = report.AnalysisFacts(
        model=deployment.model,
        served=served,
        stable_label=args.stable_label,
        canary_label=args.canary_label,
        stable_version=stable,
        canary_version=canary,
        stable=by_version.get(stable),
        canary=by_version.get(canary),
        decision=decision,
        log_source=source,
        window_hours=args.window_hours,
        low_confidence=args.low_confidence,
    )
    if args.json:  # stdout carries the JSON alone
        deployment.say = lambda line: print(line, file=sys.stderr)
    else:
        print(report.render_analysis(facts))
    applied = args.apply and decision.action != analysis.WAIT
    if args.apply and not applied:
        deployment.say("--apply: nothing to do while the decision is to wait")
    if applied:
        if served_of(deployment.read()[1], deployment.model) != served:
            raise RolloutError(f"{deployment.shared} changed during the analysis; run again")
        deployment.say(f"applying the decision: {decision.action}")
        deployment.apply(plan_for(deployment, args, decision.action))  # as the command does
    if args.json:
        print(json.dumps(report.analysis_json(facts, applied)))
    return EXIT_STATUS[decision.action]


def _window_figures(args: argparse.Namespace) -> tuple[str, list[figures.VersionFigures]]:
    """Where the store is read from, and its figures per version over the window."""
    since = datetime.now(UTC) - timedelta(hours=args.window_hours)
    if args.store == "cassandra":
        return _log_source(args), figures.cassandra_figures(since, args.low_confidence)
    rows = figures.sqlite_rows(args.sqlite, since)
    return _log_source(args), figures.summarize(rows, args.low_confidence)


def _log_source(args: argparse.Namespace) -> str:
    if args.store == "cassandra":
        return "Cassandra (CASSANDRA_* settings)"
    return f"SQLite {args.sqlite}"


def build_parser(env: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    """Defaults from the function's own settings and the model server's, read from `env`
    as they read it; SettingsError names a malformed variable."""
    function = Settings.from_env(env)
    serving = EnvDefaults.from_env(env)
    fleet = replicas_setting(env)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=str(REPO_ROOT / "serving" / "models.config"),
        help="the ModelServerConfig every replica polls: a path, configmap:NAMESPACE/NAME[/KEY] "
        "(kubectl) or gs://BUCKET/OBJECT (gcloud storage) (default: serving/models.config)",
    )
    common.add_argument(
        "--models-dir",
        type=Path,
        default=serving.models_dir,
        help="local directory standing in for /models in base paths ($MODELS_DIR, models/)",
    )
    common.add_argument("--model", default=function.model_name)
    common.add_argument(
        "--server",
        default=function.model_server_url,
        help="model server REST URL ($MODEL_SERVER_URL)",
    )
    common.add_argument(
        "--replicas",
        default=fleet,
        help="every replica's REST URL, commas between, or dns://HOST:PORT for a headless "
        "Service ($MODEL_SERVER_REPLICAS; default: --server alone)",
    )
    common.add_argument(
        "--config-poll-seconds",
        type=float,
        default=30.0,
        help="the replicas' --model_config_file_poll_wait_seconds: a replica disagreeing "
        "longer is named (%(default)g)",
    )
    common.add_argument("--stable-label", default=function.model_label)
    common.add_argument("--canary-label", default=function.canary_label)
    applying = argparse.ArgumentParser(add_help=False, parents=[common])
    applying.add_argument(
        "--grpc", metavar="HOST:PORT", help="also push each config to TF Serving over gRPC"
    )
    applying.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for each step (300)"
    )
    applying.add_argument("--poll-seconds", type=float, default=0.5, help=argparse.SUPPRESS)
    applying.add_argument(
        "--drain-seconds",
        type=float,
        default=2 * function.label_cache_seconds,
        help="wait before unloading a version a label just left; twice the function's "
        "MODEL_LABEL_CACHE_SECONDS (%(default)g)",
    )
    changing = argparse.ArgumentParser(add_help=False, parents=[applying])
    changing.add_argument(
        "--dry-run", action="store_true", help="print the plan, check its first step, write nothing"
    )
    reading = argparse.ArgumentParser(add_help=False)
    reading.add_argument(
        "--window-hours", type=float, default=24.0, help="hours of the store to read (%(default)g)"
    )
    reading.add_argument(
        "--low-confidence",
        type=float,
        default=0.9,
        help="an answer below this confidence is low-confidence (%(default)g)",
    )
    reading.add_argument(
        "--store",
        choices=("sqlite", "cassandra"),
        default=function.prediction_store,
    )
    reading.add_argument("--sqlite", type=Path, default=function.sqlite_path)
    reading.add_argument("--json", action="store_true", help="print JSON (see the README)")
    reading.set_defaults(replicas_state=False)

    parser = argparse.ArgumentParser(
        prog="python -m infra.rollout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    shown = commands.add_parser(
        "status", parents=[common, reading], help="what is served and how it does"
    )
    shown.set_defaults(replicas_state=True)  # analyze's JSON stays the decision alone
    start = commands.add_parser("canary", parents=[changing], help="start a canary")
    start.add_argument("version", type=int)
    commands.add_parser("promote", parents=[changing], help="make the canary stable")
    back = commands.add_parser("rollback", parents=[changing], help="undo the canary or stable")
    back.add_argument("--stable", action="store_true", help="roll stable back instead")
    back.add_argument("--to", type=int, help="with --stable: this version, not the previous one")
    back.add_argument(
        "--keep-loaded", action="store_true", help="leave the rejected version loaded"
    )
    _analyze_parser(commands, [applying, reading])
    return parser


def _analyze_parser(commands: argparse._SubParsersAction, parents: list) -> None:
    defaults = analysis.Thresholds()
    check = commands.add_parser(
        "analyze",
        parents=parents,
        help="canary against stable: promote, roll back or wait",
        description=analysis.__doc__ + EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.set_defaults(stable=False, to=None)  # a rollback here is always the canary's
    check.add_argument(
        "--apply",
        action="store_true",
        help="carry out a promote or a rollback decision, as those commands do",
    )
    check.add_argument(
        "--keep-loaded", action="store_true", help="on rollback, leave the canary's version loaded"
    )
    thresholds = check.add_argument_group("thresholds")
    for flag, kind, why in (
        ("--alpha", _share, "two-sided level of the tests; intervals are at 1 - alpha"),
        ("--power", _share, "power the corrections (requests) needed are computed for"),
        ("--accuracy-margin", _share, "accuracy drop to detect and the most tolerated"),
        ("--low-confidence-margin", _share, "rise in the low-confidence share tolerated"),
        ("--verdict-margin", _share, "rise in the unsure or the not-a-digit share tolerated"),
        ("--latency-increase", float, "relative rise in latency p50 or p99 tolerated ..."),
        ("--latency-slack-ms", float, "... or this many ms, whichever is more"),
        ("--min-requests", int, "records per version before latency is compared"),
        ("--min-clients", int, "distinct correcting clients per version before accuracy counts"),
    ):
        name = flag[2:].replace("-", "_")
        thresholds.add_argument(
            flag, type=kind, default=getattr(defaults, name), help=f"{why} (%(default)g)"
        )


def _share(text: str) -> float:
    """A probability or a share strictly between 0 and 1: the statistics need one."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def plan_for(
    deployment: Deployment, args: argparse.Namespace, command: str | None = None
) -> list[Step]:
    """The steps of `command` (default: the one on the command line)."""
    command = command or args.command
    _, config = deployment.read()
    current = served_of(config, deployment.model)
    if command == "canary":
        return plan.canary(current, args.version, args.canary_label)
    if command == "promote":
        return plan.promote(current, args.stable_label, args.canary_label)
    if not args.stable:
        if args.to is not None:
            raise RolloutError("--to only goes with --stable")
        return plan.rollback_canary(current, args.stable_label, args.canary_label, args.keep_loaded)
    if args.to is not None:
        previous = args.to
    else:
        previous = plan.previous_version(current, args.stable_label, deployment.facts(config))
    return plan.rollback_stable(
        current, previous, args.stable_label, args.canary_label, args.keep_loaded
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except SettingsError as refused:
        for problem in refused.problems:  # a usage error, as a bad flag is
            print(f"python -m infra.rollout: error: {problem}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        shared = shared_config(args.config)
    except RolloutError as error:
        parser.error(str(error))
    server = ServerView(args.server, args.model)
    deployment = Deployment(
        # A remote config's relative base paths would be the replicas' own: none here.
        config_file=shared.path if isinstance(shared, LocalFile) else Path.cwd() / "models.config",
        models_dir=args.models_dir,
        model=args.model,
        server=server,
        grpc=getattr(args, "grpc", None),  # status takes no change options
        timeout=getattr(args, "timeout", 0.0),
        poll_seconds=getattr(args, "poll_seconds", 0.0),
        drain_seconds=getattr(args, "drain_seconds", 0.0),
        shared=shared,
        fleet=Fleet(args.replicas, server.url, args.model, {server.url: server}),
        config_poll_seconds=args.config_poll_seconds,
    )
    try:
        if args.command == "status":
            print(status(deployment, args))
            return 0
        if args.command == "analyze":
            return analyze(deployment, args)
        steps = plan_for(deployment, args)
        if args.dry_run:
            return _dry_run(deployment, steps)
        deployment.apply(steps)
    except RolloutError as error:
        print(f"rollout: {error}", file=sys.stderr)
        return 1
    return 0


def _dry_run(deployment: Deployment, steps: Sequence[Step]) -> int:
    _, config = deployment.read()
    current = served_of(config, deployment.model)
    for number, step in enumerate(steps, 1):
        print(f"step {number}/{len(steps)}: {step.why} -> {step.target.describe()}")
    if steps:
        deployment.validated(config, current, steps[0].target)
        print("the first step is valid now; later ones are checked when they run")
    else:
        print("nothing to do")
    print("dry run: nothing written")
    return 0
