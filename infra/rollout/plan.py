"""Rollouts as plans: the sequence of served states that gets from here to there safely.

Pure functions of the current `Served` state, so every plan can be tested without a
model server. The sequencing encodes TF Serving's rules and the function's caches:

- A label already in use can only move to a version that is AVAILABLE. So a version is
  first loaded (one step, then wait for AVAILABLE), and only the next step moves a label.
- The function caches label -> version for a few seconds. A version a label has just
  left is unloaded only in a later step that starts after a drain period, so requests
  resolved just before the move still find it loaded.
- A version nothing points at any more is unloaded only by a rollback (it was rejected);
  a promote keeps the old stable loaded so that rolling back is a single label move.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from infra.rollout.errors import RolloutError
from infra.rollout.served import Served


@dataclass(frozen=True)
class Step:
    """One config push: the whole target state, and whether to drain label caches first."""

    why: str
    target: Served
    drain_first: bool = False


@dataclass(frozen=True)
class Facts:
    """What validation needs besides the configs: the disk and the model server, right now."""

    on_disk: Mapping[int, list[str]]  # version -> contract problems (empty: fine)
    available: frozenset[int]  # versions the model server reports AVAILABLE


def canary(current: Served, version: int, canary_label: str) -> list[Step]:
    """Load `version` if needed, then point the canary label at it."""
    return _point_label(current, canary_label, version)


def promote(current: Served, stable_label: str, canary_label: str) -> list[Step]:
    """Move stable to the canary's version; the old stable stays loaded for a quick rollback."""
    version = current.labels.get(canary_label)
    if version is None:
        raise RolloutError(f"there is no {canary_label!r} label to promote")
    return _point_label(current, stable_label, version)


def _point_label(current: Served, label: str, version: int) -> list[Step]:
    """Load `version` if it is not served, then move `label` to it: TF Serving's two steps."""
    if current.labels.get(label) == version:
        return []
    steps, state = [], current
    if version not in state.versions:
        state = state.loading(version)
        steps.append(Step(f"load version {version}", state))
    steps.append(Step(f"point {label} at version {version}", state.pointing({label: version})))
    return steps


def rollback_canary(
    current: Served, stable_label: str, canary_label: str, keep_loaded: bool = False
) -> list[Step]:
    """Point the canary back at stable's version, then unload the rejected version."""
    stable = _stable(current, stable_label)
    rejected = current.labels.get(canary_label)
    if rejected is None or rejected == stable:
        return []
    state = current.pointing({canary_label: stable})
    steps = [Step(f"point {canary_label} back at version {stable}", state)]
    return steps + _unload_unless_labelled(state, rejected, keep_loaded)


def rollback_stable(
    current: Served,
    previous: int,
    stable_label: str,
    canary_label: str,
    keep_loaded: bool = False,
) -> list[Step]:
    """Point stable (and a canary that followed it) at `previous`, then unload the rejected one."""
    rejected = _stable(current, stable_label)
    if previous == rejected:
        raise RolloutError(f"{stable_label!r} already points at version {previous}")
    steps, state = [], current
    if previous not in state.versions:
        state = state.loading(previous)
        steps.append(Step(f"load version {previous}", state))
    moved = {stable_label: previous}
    if current.labels.get(canary_label) == rejected:
        moved[canary_label] = previous
    state = state.pointing(moved)
    steps.append(Step(f"point {' and '.join(moved)} back at version {previous}", state))
    return steps + _unload_unless_labelled(state, rejected, keep_loaded)


def previous_version(current: Served, stable_label: str, facts: Facts) -> int:
    """The newest sound version on disk older than stable's: what `rollback --stable` returns to."""
    stable = _stable(current, stable_label)
    older = [v for v, problems in facts.on_disk.items() if v < stable and not problems]
    if not older:
        raise RolloutError(f"no sound version older than {stable} is on disk to roll back to")
    return max(older)


def problems(current: Served, target: Served, facts: Facts) -> list[str]:
    """Why writing `target` over `current` would be wrong; empty when it is safe."""
    found = []
    if not target.versions:
        found.append("no version would be served")
    for version in sorted(target.versions - current.versions):
        if version not in facts.on_disk:
            found.append(f"version {version} is not on disk")
        elif facts.on_disk[version]:
            found.append(
                f"version {version} breaks the signature contract: "
                + "; ".join(facts.on_disk[version])
            )
    for label, version in sorted(target.labels.items()):
        if version not in target.versions:
            found.append(f"label {label!r} would point at version {version}, which is not served")
        elif current.labels.get(label) != version and version not in facts.available:
            found.append(
                f"label {label!r} can only move to an AVAILABLE version, and version {version} "
                "is not (TF Serving would reject the config)"
            )
    return found


def _stable(current: Served, stable_label: str) -> int:
    if stable_label not in current.labels:
        raise RolloutError(f"there is no {stable_label!r} label")
    return current.labels[stable_label]


def _unload_unless_labelled(state: Served, version: int, keep_loaded: bool) -> list[Step]:
    if keep_loaded or version in state.labels.values() or version not in state.versions:
        return []
    return [Step(f"unload version {version}", state.unloading(version), drain_first=True)]
