"""`python -m infra.rollout`: see infra/rollout/cli.py."""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the protos import TensorFlow: keep it quiet
# The function's modules import each other as `recognizer.*` (its directory is the
# function's root), so the function's default settings need that directory importable.
sys.path.append(str(Path(__file__).resolve().parents[2] / "function"))

from infra.rollout.cli import main

sys.exit(main())
