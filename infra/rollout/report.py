"""The `status` and `analyze` reports, text and JSON, from facts the shell gathered (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from infra.rollout.analysis import INCONCLUSIVE, WORSE, Decision
from infra.rollout.figures import VersionFigures
from infra.rollout.served import Served
from recognizer import drift
from recognizer.model_client import VersionState
from recognizer.verdict import VERDICTS

ACCURACY_NOTE = (
    "accuracy: n/a for a version nobody corrected; otherwise right / corrected over the "
    "version's records in the window that a person corrected (PUT /predictions/<id>/feedback), "
    "with its 95% Wilson interval. Right: the person's digit is the model's and the verdict is "
    "digit or unsure, or the person said 'not a digit' and so did the verdict. People mostly "
    "correct wrong answers: compare versions with it, do not read it as their accuracy"
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
    # The drift reference: the version stable serves and its profile (None: no profile).
    reference: tuple[int, drift.Profile] | None = None


def render_status(facts: StatusFacts) -> str:
    return "\n".join(
        [
            f"model {facts.model}: {facts.config_file} serves {facts.served.describe()}",
            "",
            _versions_table(facts),
            "",
            f"prediction store: {facts.log_source}, last {facts.window_hours:g} h, "
            f"low confidence = below {facts.low_confidence:g}",
            _figures_table(facts),
            ACCURACY_NOTE,
            _drift_note(facts.reference),
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
    return _figures_rows(facts.figures, facts.reference)


def _figures_rows(
    figures: Sequence[VersionFigures], reference: tuple[int, drift.Profile] | None = None
) -> str:
    rows = [
        [
            "version",
            "requests",
            "share",
            "by label",
            "mean conf",
            "low conf",
            "p50 ms",
            "p99 ms",
            "digit / unsure / not a digit",
            "corrected",
            "accuracy (95% CI)",
            "drift",
        ]
    ]
    for f in figures:
        rows.append(
            [
                str(f.version),
                str(f.requests),
                f"{f.share:.1%}",
                ", ".join(f"{label} {count}" for label, count in f.by_label.items()),
                f"{f.mean_confidence:.4f}",
                f"{f.low_confidence_share:.1%}",
                f"{f.latency_p50_ms:.1f}",
                f"{f.latency_p99_ms:.1f}",
                _verdict_shares(f.verdict_shares),
                str(f.corrected),
                _accuracy(f),
                _drift(f, reference),
            ]
        )
    return _table(rows)


def _drift(f: VersionFigures, reference: tuple[int, drift.Profile] | None) -> str:
    """The largest answer-signal PSI against stable's profile, flagged past the line."""
    if reference is None or not f.drift_counts:
        return "n/a"
    assessment = drift.assess(f.drift_counts, reference[1])
    signal, value = max(assessment.psi.items(), key=lambda item: item[1])
    if not assessment.judged:
        return f"({signal} {value:.2f}, n<{drift.MIN_WINDOW})"
    return f"{signal} {value:.2f}" + (" DRIFTED" if assessment.drifted else "")


def _drift_note(reference: tuple[int, drift.Profile] | None) -> str:
    if reference is None:
        return "drift: n/a (no reference profile for the version stable serves)"
    return (
        f"drift: the largest PSI of digit, confidence and verdict against v{reference[0]}'s "
        f"profile (stable's; docs/monitoring.md), DRIFTED past {drift.PSI_DRIFT:g} from "
        f"{drift.MIN_WINDOW} records"
    )


def drift_json(f: VersionFigures, reference: tuple[int, drift.Profile] | None) -> dict | None:
    """`status --json`'s drift of a version: the reference, each PSI, what drifted."""
    if reference is None or not f.drift_counts:
        return None
    assessment = drift.assess(f.drift_counts, reference[1])
    return {
        "reference_version": reference[0],
        "psi": {s: round(v, 4) for s, v in assessment.psi.items()},
        "judged": assessment.judged,
        "drifted": list(assessment.drifted),
    }


def _accuracy(f: VersionFigures) -> str:
    if f.accuracy is None or f.accuracy_ci is None:
        return "n/a"
    low, high = f.accuracy_ci
    return f"{f.accuracy:.1%} ({low:.1%}-{high:.1%})"


def status_json(
    figures: Sequence[VersionFigures],
    served: Served,
    reference: tuple[int, drift.Profile] | None = None,
) -> dict:
    """`status --json`: the figures of every version with records in the window."""
    return {
        "versions": [
            {**version_json(f, served), "drift": drift_json(f, reference)} for f in figures
        ]
    }


def version_json(f: VersionFigures, served: Served) -> dict:
    """One version's figures; "labels" are those models.config gives it."""
    return {
        "version": f.version,
        "labels": sorted(label for label, v in served.labels.items() if v == f.version),
        "requests": f.requests,
        "feedback": f.corrected,
        "accuracy": f.accuracy,
        "accuracy_ci": None if f.accuracy_ci is None else list(f.accuracy_ci),
        "mean_confidence": f.mean_confidence,
        "low_confidence_share": f.low_confidence_share,
        "latency_ms": {"p50": f.latency_p50_ms, "p99": f.latency_p99_ms},
        # Every verdict's share once a record has one (a newer server's kinds kept too).
        "verdicts": {**dict.fromkeys(VERDICTS, 0.0), **f.verdict_shares} if f.verdicts else {},
    }


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


@dataclass(frozen=True)
class AnalysisFacts:
    model: str
    served: Served
    stable_label: str
    canary_label: str
    stable_version: int
    canary_version: int
    stable: VersionFigures | None  # None: no records in the window
    canary: VersionFigures | None
    decision: Decision
    log_source: str
    window_hours: float
    low_confidence: float


def render_analysis(facts: AnalysisFacts) -> str:
    present = [f for f in (facts.stable, facts.canary) if f is not None]
    width = max(len(check.outcome) for check in facts.decision.checks)
    return "\n".join(
        [
            f"model {facts.model}: version {facts.canary_version} ({facts.canary_label}) "
            f"against version {facts.stable_version} ({facts.stable_label})",
            f"prediction store: {facts.log_source}, last {facts.window_hours:g} h, "
            f"low confidence = below {facts.low_confidence:g}",
            _figures_rows(present) if present else "  no predictions of either version",
            "",
            f"decision: {facts.decision.action} ({_because(facts.decision)})",
            *(f"  {c.outcome.ljust(width)}  {c.reason}" for c in facts.decision.checks),
        ]
    )


def _because(decision: Decision) -> str:
    for outcome in (WORSE, INCONCLUSIVE):
        signals = [c.signal for c in decision.checks if c.outcome == outcome]
        if signals:
            return f"{outcome}: {', '.join(signals)}"
    return "every check is ok"


def analysis_json(facts: AnalysisFacts, applied: bool) -> dict:
    """`analyze --json`: the decision, every check and both versions' figures."""
    return {
        "decision": facts.decision.action,
        "applied": applied,
        "stable_version": facts.stable_version,
        "canary_version": facts.canary_version,
        "stable": None if facts.stable is None else version_json(facts.stable, facts.served),
        "canary": None if facts.canary is None else version_json(facts.canary, facts.served),
        "checks": [
            {
                "signal": c.signal,
                "outcome": c.outcome,
                "reason": c.reason,
                "difference": None if c.comparison is None else c.comparison.difference,
                "ci": None if c.comparison is None else list(c.comparison.interval),
                "p_value": None if c.comparison is None else c.comparison.p_value,
                "needed_per_version": c.needed,
            }
            for c in facts.decision.checks
        ],
    }
