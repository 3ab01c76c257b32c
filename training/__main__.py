"""`python -m training --arch cnn --version 2`: train, evaluate and export one model version.

`python -m training --from-store --version 4`: fine-tune the stable version on MNIST and
the corrections people made (training/from_store.py); exported only if no worse.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from recognizer import contract
from recognizer.env import Reader, SettingsError
from training.train import RECIPES, train_version

ROOT = Path(__file__).resolve().parent.parent


def store_defaults(env: Mapping[str, str]) -> tuple[str, Path | None]:
    """PREDICTION_STORE and SQLITE_PATH, read and checked as the function reads them."""
    reader = Reader(env)
    store = reader.choice("PREDICTION_STORE", "sqlite", ("sqlite", "cassandra"))
    sqlite = reader.path("SQLITE_PATH", None)
    reader.check()
    return store, sqlite


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    try:
        default_store, default_sqlite = store_defaults(os.environ)
    except SettingsError as error:
        parser.exit(2, f"python -m training: {error}\n")
    parser.add_argument("--arch", choices=sorted(RECIPES))
    parser.add_argument("--version", type=int, required=True, help="new version number")
    parser.add_argument("--epochs", type=int, help="override the recipe's epoch count")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--reports-dir", type=Path, default=ROOT / "docs" / "models")
    store = parser.add_argument_group("--from-store: a new version from people's corrections")
    store.add_argument("--from-store", action="store_true", help="train from the prediction store")
    store.add_argument("--store", choices=["sqlite", "cassandra"],
                       default=default_store)  # fmt: skip
    store.add_argument("--sqlite", type=Path, default=default_sqlite,
                       help="the function's SQLite log (default: SQLITE_PATH)")  # fmt: skip
    store.add_argument("--days", type=int, default=30, help="Cassandra: UTC days to read")
    store.add_argument("--from-version", type=int,
                       help="the version to fine-tune (default: the config's stable)")  # fmt: skip
    store.add_argument("--config", type=Path, default=ROOT / "serving" / "models.config")
    store.add_argument("--mnist-images", type=int, help="train on this many MNIST digits only")
    store.add_argument("--outliers-per-kind", type=int, help="nondigit uploads of each kind")
    store.add_argument("--digit-uploads-per-kind", type=int,
                       help="a rejecting start's digits as uploads, per kind")  # fmt: skip
    store.add_argument("--max-drop", type=float, default=0.0,
                       help="how much worse than the start it may be")  # fmt: skip
    args = parser.parse_args()
    if not args.from_store:
        if args.arch is None:
            parser.error("--arch is required (or --from-store)")
        train_version(
            args.arch, args.version, args.models_dir, args.reports_dir, args.seed, args.epochs
        )
        return
    raise SystemExit(from_store(args, parser))


def from_store(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Exit 0 when a version was exported, 1 when it was refused as worse."""
    from infra.rollout.served import parse, served_of
    from training import corrections
    from training.from_store import Options, train_from_store

    if args.store == "sqlite":
        if args.sqlite is None:
            parser.error("--store sqlite needs --sqlite or SQLITE_PATH")
        try:
            found = corrections.from_sqlite(args.sqlite)
        except FileNotFoundError as error:
            parser.exit(1, f"python -m training: {error}\n")
    else:
        found = corrections.from_cassandra(args.days)
    start = args.from_version
    if start is None:
        start = served_of(parse(args.config.read_text()), contract.MODEL_NAME).labels["stable"]
    options = Options(
        version=args.version,
        start_from=start,
        models_dir=args.models_dir,
        epochs=args.epochs or 1,
        mnist_images=args.mnist_images,
        outliers_per_kind=args.outliers_per_kind,
        digit_uploads_per_kind=args.digit_uploads_per_kind,
        max_drop=args.max_drop,
        seed=args.seed,
    )
    return 0 if train_from_store(found, options)["exported"] else 1


if __name__ == "__main__":
    main()
