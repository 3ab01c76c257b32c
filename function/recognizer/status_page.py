"""GET /status: how each version does, as an operator reads it, in one server-rendered page.

Per version over the window: traffic, verdict shares, accuracy from corrections with its
95% Wilson interval, drift of its answers against the profile of the version stable
serves (drift.py), latency p50/p99; and per hour, plots of traffic, the share of
confident digits and the p99 latency. Pure functions from records to HTML with inline SVG
(no script, no CDN, one style block the CSP allows by its hash); api.py reads the records.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from recognizer import drift
from recognizer.records import Record
from recognizer.verdict import NOT_A_DIGIT, VERDICTS

WINDOW_HOURS = 24
MAX_RECORDS = 5000  # read at most this many of the newest records
Z95 = 1.959963984540054
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")
WIDTH, HEIGHT, PAD = 640, 200, 36


@dataclass(frozen=True)
class VersionSummary:
    version: int
    labels: tuple[str, ...]
    requests: int
    verdict_shares: Mapping[str, float]
    corrected: int
    right: int
    latency_p50_ms: float
    latency_p99_ms: float
    drift: drift.Assessment | None


def wilson(successes: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of successes / n (n > 0); infra.rollout.stats has the
    general one, which the function cannot import (its deploy root is function/)."""
    p, z2 = successes / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def is_right(record: Record) -> bool:
    """A corrected answer was right: as infra.rollout.figures.is_right reads a verdict."""
    kind = record.verdict.kind if record.verdict else None
    assert record.feedback is not None
    if record.feedback.digit is None:
        return kind == NOT_A_DIGIT
    return kind != NOT_A_DIGIT and record.digit == record.feedback.digit


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(
    records: Sequence[Record], reference: tuple[int, drift.Profile] | None
) -> list[VersionSummary]:
    """One summary per answering version, oldest version first."""
    by_version: dict[int, list[Record]] = {}
    for record in records:
        by_version.setdefault(record.model_version, []).append(record)
    summaries = []
    for version, group in sorted(by_version.items()):
        kinds = [r.verdict.kind for r in group if r.verdict]
        corrected = [r for r in group if r.feedback is not None]
        counts = drift.count_answers(
            (r.digit, r.confidence, r.verdict.kind if r.verdict else "none") for r in group
        )
        summaries.append(
            VersionSummary(
                version=version,
                labels=tuple(sorted({r.model_label or "(pinned)" for r in group})),
                requests=len(group),
                verdict_shares={k: kinds.count(k) / len(kinds) for k in VERDICTS} if kinds else {},
                corrected=len(corrected),
                right=sum(is_right(r) for r in corrected),
                latency_p50_ms=percentile([r.latency_ms for r in group], 50),
                latency_p99_ms=percentile([r.latency_ms for r in group], 99),
                drift=None if reference is None else drift.assess(counts, reference[1]),
            )
        )
    return summaries


def hourly(
    records: Sequence[Record], now: datetime, hours: int = WINDOW_HOURS
) -> dict[str, dict[str, list[float | None]]]:
    """Per hour, oldest first: requests and the confident-digit share per version, and the
    p99 latency of all; None where an hour had no request."""
    start = now - timedelta(hours=hours)
    buckets: dict[int, list[Record]] = {}
    for record in records:
        index = int((record.created_at - start) / timedelta(hours=1))
        if 0 <= index < hours:
            buckets.setdefault(index, []).append(record)
    versions = sorted({r.model_version for r in records})
    traffic = {f"v{v}": [0.0] * hours for v in versions}
    digit_share: dict[str, list[float | None]] = {f"v{v}": [None] * hours for v in versions}
    p99: list[float | None] = [None] * hours
    for index, group in buckets.items():
        p99[index] = percentile([r.latency_ms for r in group], 99)
        for v in versions:
            mine = [r for r in group if r.model_version == v]
            traffic[f"v{v}"][index] = float(len(mine))
            judged = [r for r in mine if r.verdict]
            if judged:
                shares = sum(r.verdict.kind == "digit" for r in judged if r.verdict) / len(judged)
                digit_share[f"v{v}"][index] = shares
    return {
        "requests per hour": dict(traffic.items()),
        "share of confident digits": digit_share,
        "p99 latency, ms": {"all": p99},
    }


def chart(title: str, series: Mapping[str, Sequence[float | None]], hours: int) -> str:
    """A line chart as inline SVG, scaled to its largest value; gaps where a value is None."""
    values = [v for line in series.values() for v in line if v is not None]
    top = max(values, default=0.0) or 1.0
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD

    def point(i: int, v: float) -> str:
        x = PAD + inner_w * i / max(1, hours - 1)
        return f"{x:.1f},{PAD + inner_h * (1 - v / top):.1f}"

    parts = [
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{PAD}" y="20" class="t">{html.escape(title)}</text>',
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" class="a"/>',
        f'<text x="4" y="{PAD + 4}" class="s">{top:.3g}</text>',
        f'<text x="4" y="{HEIGHT - PAD}" class="s">0</text>',
        f'<text x="{PAD}" y="{HEIGHT - 8}" class="s">-{hours} h</text>',
        f'<text x="{WIDTH - PAD - 24}" y="{HEIGHT - 8}" class="s">now</text>',
    ]
    for n, (name, line) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        runs: list[list[str]] = [[]]
        for i, v in enumerate(line):
            if v is None:
                runs.append([])
            else:
                runs[-1].append(point(i, v))
        for run in (r for r in runs if r):
            if len(run) == 1:
                x, y = run[0].split(",")
                parts.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{colour}"/>')
            else:
                parts.append(
                    f'<polyline points="{" ".join(run)}" fill="none" stroke="{colour}" '
                    'stroke-width="2"/>'
                )
        parts.append(
            f'<text x="{WIDTH - PAD - 60 * (len(series) - n)}" y="20" font-size="13" '
            f'font-weight="600" fill="{colour}">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


STYLE = (
    "body{font:15px/1.4 system-ui,sans-serif;margin:16px;color:#222}"
    "table{border-collapse:collapse;margin:8px 0;font-variant-numeric:tabular-nums}"
    "th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:right}"
    "th:first-child,td:first-child{text-align:left}"
    ".wrap{overflow-x:auto}svg{width:100%;max-width:640px;height:auto;display:block}"
    ".t{font-size:14px;font-weight:600}.s{font-size:11px;fill:#555}.a{stroke:#999}"
    ".bad{color:#b00;font-weight:600}"
)


def render(
    records: Sequence[Record],
    now: datetime,
    reference: tuple[int, drift.Profile] | None,
    hours: int = WINDOW_HOURS,
) -> bytes:
    """The page for the records of the last `hours` (newest records are enough)."""
    window = [r for r in records if r.created_at >= now - timedelta(hours=hours)]
    rows = "".join(_row(s) for s in summarize(window, reference))
    plots = "".join(chart(t, s, hours) for t, s in hourly(window, now, hours).items())
    ref = "no reference profile" if reference is None else f"v{reference[0]}'s profile"
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>Digit recognizer status</title><style>{STYLE}</style></head><body>"
        f"<h1>Status</h1><p>Last {hours} h, {len(window)} predictions, "
        f"to {html.escape(now.strftime('%Y-%m-%d %H:%M UTC'))}.</p>"
        '<div class="wrap"><table><thead><tr><th>version</th><th>labels</th>'
        "<th>requests</th><th>digit / unsure / not a digit</th>"
        "<th>accuracy (95% CI), corrected</th>"
        f"<th>drift vs {html.escape(ref)}</th><th>p50 / p99 ms</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div>{plots}"
        "<p>Accuracy counts only the answers people corrected, mostly wrong ones: compare "
        f"versions with it. Drift: the largest PSI of digit, confidence and verdict, "
        f"past {drift.PSI_DRIFT:g} from {drift.MIN_WINDOW} predictions (docs/monitoring.md)."
        "</p></body></html>"
    )
    return body.encode("utf-8")


def _row(s: VersionSummary) -> str:
    shares = (
        " / ".join(f"{s.verdict_shares.get(k, 0.0):.1%}" for k in VERDICTS)
        if s.verdict_shares
        else "n/a"
    )
    if s.corrected:
        low, high = wilson(s.right, s.corrected)
        accuracy = f"{s.right / s.corrected:.1%} ({low:.1%}-{high:.1%}), {s.corrected}"
    else:
        accuracy = "n/a, 0"
    if s.drift is None:
        shift = "n/a"
    else:
        signal, value = max(s.drift.psi.items(), key=lambda item: item[1])
        flagged = bool(s.drift.drifted)
        shift = f"{signal} {value:.2f}" + (" DRIFTED" if flagged else "")
        if not s.drift.judged:
            shift += f" (n&lt;{drift.MIN_WINDOW})"
        elif flagged:
            shift = f'<span class="bad">{shift}</span>'
    cells = [
        f"v{s.version}",
        html.escape(", ".join(s.labels)),
        str(s.requests),
        shares,
        accuracy,
        shift,
        f"{s.latency_p50_ms:.1f} / {s.latency_p99_ms:.1f}",
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
