"""`python -m infra.rollout`: see infra/rollout/cli.py."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the protos import TensorFlow: keep it quiet

from infra.rollout.cli import main

sys.exit(main())
