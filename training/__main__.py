"""`python -m training --arch cnn --version 2`: train, evaluate and export one model version."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.train import RECIPES, train_version

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("--arch", choices=sorted(RECIPES), required=True)
    parser.add_argument("--version", type=int, required=True, help="new version number")
    parser.add_argument("--epochs", type=int, help="override the recipe's epoch count")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--reports-dir", type=Path, default=ROOT / "docs" / "models")
    args = parser.parse_args()
    train_version(
        args.arch, args.version, args.models_dir, args.reports_dir, args.seed, args.epochs
    )


if __name__ == "__main__":
    main()
