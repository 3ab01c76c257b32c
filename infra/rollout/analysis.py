"""Canary against stable: the two versions' figures in, promote / roll back / wait out.

Pure: no files, no clock, no server. Each signal gets a check whose outcome is ok,
worse or inconclusive, with the sentence a person reads:

- Accuracy from corrections (figures.is_right): the difference canary - stable with
  the Newcombe hybrid score interval at 1 - alpha, and the pooled two-proportion z-test's
  p-value beside it. Worse when the whole interval is below 0; ok when it lies above
  -margin (the canary is at most `accuracy_margin` less accurate); otherwise inconclusive,
  saying how many corrections each version needs for the z-test at `alpha` to detect a
  drop of `accuracy_margin` from the two versions' pooled accuracy with `power`, assuming
  equal numbers per version (with no correction at all, the worst case, accuracy 50%).
- Shares where higher is worse (low confidence, unsure, not a digit): worse when the
  interval of the difference is above 0 and the estimate above the margin; ok when the
  interval lies below the margin; otherwise inconclusive, with the requests needed.
  Verdict shares are compared only when both versions have records with verdicts.
- Latency p50 and p99 (no interval): judged once both versions have `min_requests`
  records; worse when the canary's is more than `latency_increase` higher and by more
  than `latency_slack_ms`.
- Errors: the store records answered predictions only, so it has no error share; the check
  says so and does not decide.

The decision: roll back if any check is worse; else wait if any is inconclusive (or a
version has no records in the window); else promote.
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.rollout import stats
from infra.rollout.figures import CORRECTIONS_PER_CLIENT, VersionFigures

PROMOTE, ROLLBACK, WAIT = "promote", "rollback", "wait"
OK, WORSE, INCONCLUSIVE, NOT_JUDGED = "ok", "worse", "inconclusive", "not judged"


@dataclass(frozen=True)
class Thresholds:
    """What counts as worse, as good enough and as enough evidence (the CLI's flags)."""

    alpha: float = 0.05  # two-sided level of the test; intervals are at 1 - alpha
    power: float = 0.8  # for the corrections (or requests) needed
    accuracy_margin: float = 0.02  # the accuracy drop to detect, and the one tolerated
    low_confidence_margin: float = 0.02  # the rise in low-confidence share tolerated
    verdict_margin: float = 0.05  # the rise in the unsure or the not-a-digit share tolerated
    latency_increase: float = 0.3  # the relative rise in p50 or p99 tolerated ...
    latency_slack_ms: float = 5.0  # ... or this many milliseconds, whichever is more
    min_requests: int = 100  # per version before percentiles are compared (p99 needs 100)
    # Distinct correcting clients each version needs before its accuracy is judged: a few
    # clients' corrections are not independent evidence, however many they send (#23).
    min_clients: int = 10


@dataclass(frozen=True)
class Comparison:
    """canary - stable of one proportion, k of n on each side."""

    stable: tuple[int, int]
    canary: tuple[int, int]
    difference: float
    interval: tuple[float, float]
    p_value: float


@dataclass(frozen=True)
class Check:
    signal: str
    outcome: str  # OK, WORSE, INCONCLUSIVE or NOT_JUDGED
    reason: str  # the sentence a person reads
    comparison: Comparison | None = None
    needed: int | None = None  # per version, for the test to have the power


@dataclass(frozen=True)
class Decision:
    action: str  # PROMOTE, ROLLBACK or WAIT
    checks: tuple[Check, ...]


def decide(
    stable: VersionFigures | None, canary: VersionFigures | None, thresholds: Thresholds
) -> Decision:
    """The decision on the canary from both versions' figures over the window."""
    missing = [
        Check("traffic", INCONCLUSIVE, f"no records of the {name} version in the window yet")
        for name, figures in (("stable", stable), ("canary", canary))
        if figures is None
    ]
    if stable is None or canary is None:
        return Decision(WAIT, tuple(missing))
    checks = (
        _accuracy(stable, canary, thresholds),
        _share(
            "low-confidence share",
            (stable.low_confidence, stable.requests),
            (canary.low_confidence, canary.requests),
            thresholds.low_confidence_margin,
            thresholds,
            "requests",
        ),
        *(_verdict(kind, stable, canary, thresholds) for kind in ("unsure", "not_a_digit")),
        *_latency(stable, canary, thresholds),
        Check(
            "errors",
            NOT_JUDGED,
            "error share: not in the store, which records answered predictions only (a failed "
            "request leaves no record); watch the function's 5xx rate in its request log",
        ),
    )
    outcomes = {check.outcome for check in checks}
    action = ROLLBACK if WORSE in outcomes else WAIT if INCONCLUSIVE in outcomes else PROMOTE
    return Decision(action, checks)


def _accuracy(stable: VersionFigures, canary: VersionFigures, t: Thresholds) -> Check:
    few = [
        f"{name} {f.correcting_clients}"
        for name, f in (("stable", stable), ("canary", canary))
        if f.correcting_clients is not None and f.correcting_clients < t.min_clients
    ]
    if few:
        return Check(
            "accuracy",
            INCONCLUSIVE,
            "accuracy from corrections: not enough independent evidence: corrections from "
            f"{' and '.join(few)} distinct client(s), {t.min_clients} needed per version (a "
            f"client counts for at most {CORRECTIONS_PER_CLIENT} corrections per version, a "
            "pinned request for none)",
        )
    margin, corrected = t.accuracy_margin, stable.corrected + canary.corrected
    if corrected:
        base = min(1.0, max(margin, (stable.right + canary.right) / corrected))
        assumed = f"{base:.1%}, both versions' accuracy together"
    else:
        base, assumed = 0.5, "50%, the worst case"
    needed = stats.per_group(base, base - margin, t.alpha, t.power)
    if stable.corrected >= needed and canary.corrected >= needed:
        power = (
            f"both versions have the {needed:,} corrections a {t.power:.0%}-power test of a "
            f"{_pp(margin)} drop needs; more corrections narrow the interval"
        )
    else:
        power = (
            f"for the z-test at the {t.alpha:g} level to detect a {_pp(margin)} drop from "
            f"{assumed}, with {t.power:.0%} power, each version needs about {needed:,} "
            f"corrections: stable {_more(needed, stable.corrected)}, "
            f"canary {_more(needed, canary.corrected)}"
        )
    if not stable.corrected or not canary.corrected:
        nobody = " and ".join(
            name for name, f in (("stable", stable), ("canary", canary)) if not f.corrected
        )
        return Check(
            "accuracy",
            INCONCLUSIVE,
            f"accuracy from corrections: not enough evidence yet, nobody corrected the {nobody} "
            f"version's answers in the window; {power}",
            needed=needed,
        )
    comparison = _compare((stable.right, stable.corrected), (canary.right, canary.corrected), t)
    low, high = comparison.interval
    figures = (
        f"accuracy from corrections: canary {canary.right / canary.corrected:.1%} of "
        f"{canary.corrected:,} vs stable {stable.right / stable.corrected:.1%} of "
        f"{stable.corrected:,}, {_difference(comparison, t)}"
    )
    if high < 0:
        return Check("accuracy", WORSE, f"{figures}: the canary is less accurate", comparison)
    if low > -margin:
        return Check(
            "accuracy",
            OK,
            f"{figures}: the canary is at most {_pp(margin)} less accurate",
            comparison,
            needed,
        )
    return Check(
        "accuracy",
        INCONCLUSIVE,
        f"{figures}: not enough evidence yet, the interval reaches both above 0 and below "
        f"-{_pp(margin)}; {power}",
        comparison,
        needed,
    )


def _verdict(kind: str, stable: VersionFigures, canary: VersionFigures, t: Thresholds) -> Check:
    signal = f"{kind.replace('_', '-')} share"
    stable_judged, canary_judged = sum(stable.verdicts.values()), sum(canary.verdicts.values())
    if not stable_judged or not canary_judged:
        return Check(signal, NOT_JUDGED, f"{signal}: a version has no records with verdicts")
    return _share(
        signal,
        (stable.verdicts.get(kind, 0), stable_judged),
        (canary.verdicts.get(kind, 0), canary_judged),
        t.verdict_margin,
        t,
        "records with verdicts",
    )


def _share(
    signal: str,
    stable: tuple[int, int],
    canary: tuple[int, int],
    margin: float,
    t: Thresholds,
    unit: str,
) -> Check:
    """A share where higher is worse: worse beyond `margin`, ok when surely within it."""
    comparison = _compare(stable, canary, t)
    low, high = comparison.interval
    figures = (
        f"{signal}: canary {canary[0] / canary[1]:.1%} vs stable {stable[0] / stable[1]:.1%}, "
        f"{_difference(comparison, t)}"
    )
    if low > 0 and comparison.difference > margin:
        return Check(signal, WORSE, f"{figures}: higher by more than {_pp(margin)}", comparison)
    if high < margin:
        return Check(signal, OK, f"{figures}: at most {_pp(margin)} higher", comparison)
    pooled = (stable[0] + canary[0]) / (stable[1] + canary[1])
    base = min(1 - margin, pooled)
    needed = stats.per_group(base, base + margin, t.alpha, t.power)
    return Check(
        signal,
        INCONCLUSIVE,
        f"{figures}: not enough evidence yet; to detect a {_pp(margin)} rise from {base:.1%} "
        f"each version needs about {needed:,} {unit}: stable {_more(needed, stable[1])}, "
        f"canary {_more(needed, canary[1])}",
        comparison,
        needed,
    )


def _latency(stable: VersionFigures, canary: VersionFigures, t: Thresholds) -> list[Check]:
    fewest = min(stable.requests, canary.requests)
    if fewest < t.min_requests:
        return [
            Check(
                "latency",
                INCONCLUSIVE,
                f"latency: compared from {t.min_requests} records per version; stable has "
                f"{stable.requests:,}, canary {canary.requests:,}",
                needed=t.min_requests,
            )
        ]
    checks = []
    for name, before, after in (
        ("p50", stable.latency_p50_ms, canary.latency_p50_ms),
        ("p99", stable.latency_p99_ms, canary.latency_p99_ms),
    ):
        allowed = max(before * (1 + t.latency_increase), before + t.latency_slack_ms)
        figures = (
            f"latency {name}: canary {after:.1f} ms vs stable {before:.1f} ms "
            f"(allowed up to {allowed:.1f} ms: +{t.latency_increase:.0%} or "
            f"+{t.latency_slack_ms:g} ms, whichever is more)"
        )
        outcome = WORSE if after > allowed else OK
        checks.append(Check(f"latency {name}", outcome, figures))
    return checks


def _compare(stable: tuple[int, int], canary: tuple[int, int], t: Thresholds) -> Comparison:
    return Comparison(
        stable=stable,
        canary=canary,
        difference=canary[0] / canary[1] - stable[0] / stable[1],
        interval=stats.newcombe(*canary, *stable, confidence=1 - t.alpha),
        p_value=stats.z_test(*canary, *stable),
    )


def _difference(comparison: Comparison, t: Thresholds) -> str:
    low, high = comparison.interval
    return (
        f"{_pp(comparison.difference, signed=True)} ({1 - t.alpha:.0%} CI "
        f"{_pp(low, signed=True)} to {_pp(high, signed=True)}, z-test p = {comparison.p_value:.3g})"
    )


def _pp(share: float, signed: bool = False) -> str:
    """A difference of shares in percentage points."""
    return f"{share * 100:+.1f} pp" if signed else f"{share * 100:g} pp"


def _more(needed: int, have: int) -> str:
    return f"{needed - have:,} more" if have < needed else "enough"
