"""The one error the rollout tool reports to its user (exit status 1, no traceback)."""

from __future__ import annotations


class RolloutError(Exception):
    """A change was refused or did not take effect; the message says what to do."""
