"""The `status` report: plain-text tables from facts gathered by the shell (no I/O here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from function.recognizer.verdict import VERDICTS
from infra.rollout.logstats import VersionFigures
from infra.rollout.served import Served
from infra.rollout.server import VersionState

ACCURACY_NOTE = (
    "accuracy: n/a until users can correct answers (no correction feature yet), so the log "
    "holds no ground truth"
)


@dataclass(frozen=True)
class StatusFacts:
    model: str
    config_file: str
    served: Served
    on_disk: Mapping[int, list[str]]  # version -> contract problems
    server_url: str
    server_versions: Mapping[int, VersionState] | str  # str: why unknown
    server_labels: Mapping[str, int | None]
    log_source: str
    figures: Sequence[VersionFigures] | str  # str: why unknown
    window_hours: float
    low_confidence: float


def render_status(facts: StatusFacts) -> str:
    return "\n".join(
        [
            f"model {facts.model}: {facts.config_file} serves {facts.served.describe()}",
            "",
            _versions_table(facts),
            "",
            f"prediction log: {facts.log_source}, last {facts.window_hours:g} h, "
            f"low confidence = below {facts.low_confidence:g}",
            _figures_table(facts),
            ACCURACY_NOTE,
        ]
    )


def _versions_table(facts: StatusFacts) -> str:
    server = facts.server_versions if not isinstance(facts.server_versions, str) else {}
    versions = sorted(set(facts.on_disk) | facts.served.versions | set(server))
    rows = [["version", "on disk", "signature", "served", "labels", "server", "server labels"]]
    for version in versions:
        problems = facts.on_disk.get(version)
        state = server.get(version)
        rows.append(
            [
                str(version),
                "yes" if problems is not None else "no",
                "-" if problems is None else ("ok" if not problems else "; ".join(problems)),
                "yes" if version in facts.served.versions else "no",
                _labels_of(version, facts.served.labels),
                "-"
                if state is None
                else state.state + (f" ({state.error})" if state.error else ""),
                _labels_of(version, facts.server_labels),
            ]
        )
    table = _table(rows)
    if isinstance(facts.server_versions, str):
        table += f"\nmodel server {facts.server_url}: {facts.server_versions}"
    return table


def _figures_table(facts: StatusFacts) -> str:
    if isinstance(facts.figures, str):
        return f"  {facts.figures}"
    if not facts.figures:
        return "  no predictions in this window"
    rows = [
        [
            "version",
            "requests",
            "share",
            "by label",
            "mean conf",
            "low conf",
            "p50 ms",
            "p95 ms",
            "digit / unsure / not a digit",
            "accuracy",
        ]
    ]
    for f in facts.figures:
        rows.append(
            [
                str(f.version),
                str(f.requests),
                f"{f.share:.1%}",
                ", ".join(f"{label} {count}" for label, count in f.by_label.items()),
                f"{f.mean_confidence:.4f}",
                f"{f.low_confidence_share:.1%}",
                f"{f.latency_p50_ms:.1f}",
                f"{f.latency_p95_ms:.1f}",
                _verdict_shares(f.verdict_shares),
                "n/a" if f.accuracy is None else f"{f.accuracy:.2%}",
            ]
        )
    return _table(rows)


def _verdict_shares(shares: Mapping[str, float]) -> str:
    """The three verdicts' shares; "n/a" when no record in the window has a verdict."""
    if not shares:
        return "n/a"
    return " / ".join(f"{shares.get(kind, 0.0):.1%}" for kind in VERDICTS)


def _labels_of(version: int, labels: Mapping[str, int | None]) -> str:
    return ", ".join(sorted(k for k, v in labels.items() if v == version)) or "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
