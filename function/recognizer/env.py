"""One reader for settings in environment variables, for every component of the project.

Each getter names its variable in any problem and returns the default instead of
raising, so one start-up reports every malformed value at once (`check` raises a single
SettingsError listing them all). Only the standard library: the function ships this.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TypeVar

# The one spelling of a yes or no, whatever the case.
TRUE = frozenset({"true", "1", "yes", "on"})
FALSE = frozenset({"false", "0", "no", "off"})
_SHOWN = 80  # characters of a bad value echoed back: enough to recognise it
_Default = TypeVar("_Default", Path, None)


class SettingsError(ValueError):
    """One or more settings are missing or malformed; `problems` names each variable."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            super().__init__(self.problems[0])
        else:
            lines = "".join(f"\n  - {problem}" for problem in self.problems)
            super().__init__(f"{len(self.problems)} settings are malformed:{lines}")


def _shown(raw: str) -> str:
    return repr(raw if len(raw) <= _SHOWN else raw[:_SHOWN] + "...")


def _plain(value: float) -> str:
    """1.0 -> '1', 0.5 -> '0.5': bounds read as people write them."""
    return f"{value:g}"


class Reader:
    """Typed getters over `env` that collect problems instead of stopping at the first.

    An unset or blank variable means its default. Values are stripped, except secrets'."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def raw(self, name: str) -> str | None:
        """The stripped value, or None when unset or blank."""
        value = self.env.get(name)
        if value is None or not value.strip():
            return None
        return value.strip()

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def check(self) -> None:
        """Raise SettingsError naming every problem found so far, if any."""
        if self.problems:
            raise SettingsError(self.problems)

    def text(
        self,
        name: str,
        default: str,
        pattern: re.Pattern[str] | None = None,
        rule: str = "",
    ) -> str:
        """A string; with `pattern`, one it must match in full (`rule` says what that is)."""
        value = self.raw(name)
        if value is None:
            return default
        if pattern is not None and not pattern.fullmatch(value):
            self.problem(f"{name} must be {rule}, not {_shown(value)}")
            return default
        return value

    def required(self, name: str, what: str) -> str:
        """A string that must be set; `what` says what it is, for the message."""
        value = self.raw(name)
        if value is None:
            self.problem(f"{name} is required: {what}")
            return ""
        return value

    def choice(
        self, name: str, default: str, choices: Iterable[str], *, upper: bool = False
    ) -> str:
        """One of `choices`, compared upper-cased when `upper` (e.g. consistency levels)."""
        allowed = tuple(choices)
        value = self.raw(name)
        if value is None:
            return default
        if upper:
            value = value.upper()
        if value not in allowed:
            self.problem(f"{name} must be one of {', '.join(allowed)}, not {_shown(value)}")
            return default
        return value

    def flag(self, name: str, default: bool) -> bool:
        """true/false, 1/0, yes/no or on/off, in any case."""
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in TRUE:
            return True
        if value.lower() in FALSE:
            return False
        self.problem(f"{name} must be true or false (or 1/0, yes/no, on/off), not {_shown(value)}")
        return default

    def whole(self, name: str, default: int, low: int = 0, high: int | None = None) -> int:
        """A whole number from `low` to `high`; 64, 64.0 and 1e6 are whole, 2.7 is not."""
        value = self.raw(name)
        if value is None:
            return default
        try:
            number: float = int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                number = math.nan
        if not (math.isfinite(number) and number == int(number)):
            self.problem(f"{name} must be a whole number{_range(low, high)}, not {_shown(value)}")
            return default
        if not _within(number, low, high):
            self.problem(f"{name} must be{_bounds(low, high, whole=True)}, not {_shown(value)}")
            return default
        return int(number)

    def number(
        self,
        name: str,
        default: float,
        low: float | None = 0,
        high: float | None = None,
        *,
        above: float | None = None,
    ) -> float:
        """A finite number from `low` (or strictly `above`) to `high`; never nan or inf."""
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            self.problem(f"{name} must be a number, not {_shown(value)}")
            return default
        if above is not None:
            if not (math.isfinite(number) and number > above and _within(number, None, high)):
                most = "" if high is None else f" and at most {_plain(high)}"
                self.problem(
                    f"{name} must be a number above {_plain(above)}{most}, not {_shown(value)}"
                )
                return default
            return number
        if number < 0 and (low is None or low >= 0):
            self.problem(f"{name} must not be negative, not {_shown(value)}")
            return default
        if not (math.isfinite(number) and _within(number, low, high)):
            self.problem(f"{name} must be{_bounds(low, high)}, not {_shown(value)}")
            return default
        return number

    def path(
        self, name: str, default: _Default, *, must_exist: bool = False, directory: bool = False
    ) -> Path | _Default:
        """The path of a file (or of a `directory`), never of the other kind; with
        `must_exist`, of one that exists."""
        value = self.raw(name)
        if value is None:
            return default
        path = Path(value)
        kind = "directory" if directory else "file"
        wrong_kind = path.is_file() if directory else path.is_dir()
        if "\0" in value or wrong_kind or (must_exist and not path.exists()):
            wanted = f"an existing {kind}" if must_exist else f"the path of a {kind}"
            self.problem(f"{name} must be {wanted}, not {_shown(value)}")
            return default
        return path

    def secret(self, name: str) -> str | None:
        """Verbatim (spaces may be meant), None when unset or empty; never echoed."""
        return self.env.get(name) or None


def _within(number: float, low: float | None, high: float | None) -> bool:
    return (low is None or number >= low) and (high is None or number <= high)


def _bounds(low: float | None, high: float | None, *, whole: bool = False) -> str:
    kind = " a whole number" if whole else " a number"
    if low is not None and high is not None:
        return f" between {_plain(low)} and {_plain(high)}"
    if low is not None:
        return f"{kind} of at least {_plain(low)}"
    if high is not None:
        return f"{kind} of at most {_plain(high)}"
    return " a finite number"


def _range(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" from {_plain(low)} to {_plain(high)}"
    if low is not None:
        return f" of at least {_plain(low)}"
    return ""
