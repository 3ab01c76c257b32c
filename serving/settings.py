"""The development model server's environment variables, read with the function's reader.

MODEL_SERVER_PORT and MODELS_DIR are the defaults of --rest_api_port and --models_dir;
a malformed one is a usage error naming it, as a malformed flag is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from recognizer.env import Reader

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class EnvDefaults:
    """What the environment sets of the flags' defaults."""

    rest_api_port: int = 8501  # 0 picks a free port
    models_dir: Path = REPO_ROOT / "models"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EnvDefaults:
        """MODEL_SERVER_PORT and MODELS_DIR; SettingsError names each malformed one."""
        default = cls()
        read = Reader(env)
        defaults = cls(
            rest_api_port=read.whole("MODEL_SERVER_PORT", default.rest_api_port, 0, 65535),
            models_dir=read.path("MODELS_DIR", default.models_dir, directory=True),
        )
        read.check()
        return defaults
