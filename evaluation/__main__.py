"""`python -m evaluation [--split test] [--version 3]`: verdicts on labelled uploads, via HTTP.

Starts the development model server and the function (2 workers, on a fresh SQLite
file), POSTs every upload of the split to /predict (a few at a time, as clients would),
and prints per group and kind the share that came out right (digits: verdict "digit"
with the right digit; non-digits: any other verdict, or "no digit found") beside the
targets, and beside the same figure for the previous stable version (`--baseline`: the
newest served version older than stable's, as `rollout rollback --stable` would choose),
asked the same uploads pinned. Then the open-set figures of each (AUROC, FPR at 95%
recall) for the non-digits of the kinds training used and for the held-out kinds no
version trained on, apart. `--tradeoff PNG` also plots non-digits rejected against digits
rejected over VERDICT_MIN_CONFIDENCE. VERDICT_* settings in the environment reach the
function.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import urllib3

from bench.stack import function_server, model_server
from evaluation import scoring, sets
from training.data import load_mnist

CLIENTS = 4  # concurrent uploads: enough to keep both workers busy on 2 cores
THRESHOLDS = [round(0.30 + 0.01 * n, 2) for n in range(70)] + [0.995, 0.999]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__)
    parser.add_argument("--split", choices=["validation", "test"], default="test")
    parser.add_argument("--version", type=int, help="pin a model version (default: stable)")
    parser.add_argument("--mnist", type=int, default=sets.Sizes.mnist, help="MNIST images")
    parser.add_argument("--per-kind", type=int, default=sets.Sizes.nondigits_per_kind,
                        help="non-digits of each kind")  # fmt: skip
    parser.add_argument("--photos-per-kind", type=int, default=sets.Sizes.photos_per_kind)
    parser.add_argument("--uploads-per-kind", type=int, default=sets.Sizes.uploads_per_kind)
    parser.add_argument("--degraded-per-kind", type=int, default=sets.Sizes.degraded_per_kind)
    parser.add_argument("--held-out-per-kind", type=int, default=sets.Sizes.held_out_per_kind)
    parser.add_argument("--baseline", type=int, help="beside it (default: the previous stable)")
    parser.add_argument("--no-baseline", action="store_true", help="report one version only")
    parser.add_argument("--json", type=Path, help="write every answer here")
    parser.add_argument("--tradeoff", type=Path, help="plot the threshold trade-off (PNG)")
    args = parser.parse_args()

    started = time.monotonic()
    sizes = sets.Sizes(
        args.mnist,
        args.uploads_per_kind,
        args.photos_per_kind,
        args.per_kind,
        args.degraded_per_kind,
        args.held_out_per_kind,
    )
    uploads = sets.build(args.split, load_mnist(), sizes)
    print(f"{len(uploads):,} uploads of the {args.split} split made in "
          f"{time.monotonic() - started:.0f} s")  # fmt: skip
    query = "" if args.version is None else f"?version={args.version}"
    with (
        tempfile.TemporaryDirectory() as tmp,
        model_server() as models,
        function_server(
            models.url, Path(tmp) / "evaluation.sqlite3", workers=2, threads=4
        ) as function,
    ):
        answers = ask_all(f"{function.url}/predict{query}", uploads)
        if not args.no_baseline and args.baseline is None:
            args.baseline = previous_stable(models.url)
        baseline = (
            [] if args.no_baseline
            else ask_all(f"{function.url}/predict?version={args.baseline}", uploads)
        )  # fmt: skip
    print(f"answered in {time.monotonic() - started:.0f} s\n")
    print(render(scoring.table(answers), scoring.table(baseline), args))
    print()
    print(render_open_set(answers, baseline, args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(a) for a in answers]) + "\n")
    if args.tradeoff:
        plot(scoring.tradeoff(answers, THRESHOLDS), args.tradeoff, args)


def previous_stable(model_url: str) -> int:
    """The newest available version older than the one `stable` points at."""
    pool = urllib3.PoolManager(retries=False, timeout=30)
    spec = json.loads(
        pool.request("GET", f"{model_url}/v1/models/mnist/labels/stable/metadata").data
    )
    stable = int(spec["model_spec"]["version"])
    status = json.loads(pool.request("GET", f"{model_url}/v1/models/mnist").data)
    older = [
        int(entry["version"])
        for entry in status["model_version_status"]
        if entry["state"] == "AVAILABLE" and int(entry["version"]) < stable
    ]
    if not older:
        raise SystemExit(f"no served version older than stable's ({stable}): use --no-baseline")
    return max(older)


def ask_all(url: str, uploads: list[sets.Upload]) -> list[scoring.Answer]:
    pool = urllib3.PoolManager(maxsize=CLIENTS, retries=False, timeout=30)
    with ThreadPoolExecutor(CLIENTS) as workers:
        return list(workers.map(lambda upload: ask(pool, url, upload), uploads))


def ask(pool: urllib3.PoolManager, url: str, upload: sets.Upload) -> scoring.Answer:
    response = pool.request(
        "POST", url, body=upload.data, headers={"Content-Type": "application/octet-stream"}
    )
    body = json.loads(response.data)
    if response.status != 200:
        return scoring.Answer(upload.group, upload.kind, upload.label, response.status,
                              body["error"]["code"], None, None, (), ())  # fmt: skip
    (prediction,) = body["predictions"]
    return scoring.Answer(
        upload.group,
        upload.kind,
        upload.label,
        200,
        None,
        prediction["verdict"],
        prediction["digit"],
        tuple(prediction["reasons"]),
        tuple(prediction["probabilities"]),
    )


def render(rows: list[scoring.Row], before: list[scoring.Row], args: argparse.Namespace) -> str:
    model = "stable" if args.version is None else f"v{args.version}"
    settings = {k: v for k, v in sorted(os.environ.items()) if k.startswith("VERDICT_")}
    was = {(row.group, row.kind): row.right for row in before}
    then = "" if args.no_baseline else f"v{args.baseline}"
    lines = [
        f"split {args.split}, model {model}, settings {settings or 'defaults'}",
        f"{'group':11} {'kind':36} {'images':>6} {'right':>7} {then:>7} {'target':>7}  verdicts",
    ]
    for row in rows:
        target = scoring.TARGETS.get(row.group) if row.kind == "all" else None
        verdicts = ", ".join(f"{name} {share:.1%}" for name, share in row.verdicts.items())
        mark = "" if target is None else ("  met" if row.right >= target else "  MISSED")
        earlier = was.get((row.group, row.kind))
        lines.append(
            f"{row.group:11} {row.kind:36} {row.count:6} {row.right:7.2%} "
            f"{'' if earlier is None else f'{earlier:.2%}':>7} "
            f"{'' if target is None else f'{target:.0%}':>7}  {verdicts}{mark}"
        )
    return "\n".join(lines)


def render_open_set(
    answers: list[scoring.Answer], before: list[scoring.Answer], args: argparse.Namespace
) -> str:
    """AUROC and FPR at 95% recall, all digits against each non-digit group, each version."""
    model = "stable" if args.version is None else f"v{args.version}"
    runs = [(model, answers)] + ([] if args.no_baseline else [(f"v{args.baseline}", before)])
    lines = [f"{'open set: digits against':26} {'model':7} {'AUROC':>7} {'FPR@95':>7}"]
    for group in ("non-digits", "held-out"):
        for name, run in runs:
            if any(answer.group == group for answer in run):
                figures = scoring.open_set(run, group)
                lines.append(f"{group:26} {name:7} {figures.auroc:7.4f} {figures.fpr_at_95:7.2%}")
    return "\n".join(lines)


def plot(points: list[tuple[float, float, float]], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 4.5))
    axes.plot([p[2] for p in points], [p[1] for p in points], marker=".", linewidth=1)
    for threshold, rejected, lost in points:
        if threshold in (0.5, 0.7, 0.8, 0.9, 0.95, 0.99):
            axes.annotate(f"{threshold:g}", (lost, rejected), textcoords="offset points",
                          xytext=(6, -10), fontsize=8)  # fmt: skip
    axes.set_xlabel("digits not stood by (share of all digit uploads)")
    axes.set_ylabel("non-digits rejected")
    model = "stable" if args.version is None else f"v{args.version}"
    axes.set_title(f"VERDICT_MIN_CONFIDENCE, {args.split} split, {model}")
    axes.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    for threshold, rejected, lost in points:
        if threshold in (0.5, 0.7, 0.8, 0.9, 0.95, 0.99):
            print(f"min_confidence {threshold:g}: non-digits rejected {rejected:.1%}, "
                  f"digits not stood by {lost:.2%}")  # fmt: skip


if __name__ == "__main__":
    main()
