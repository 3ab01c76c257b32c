"""What the model server reports, over TF Serving's REST API (the development server speaks it too).

Version states come from the status endpoint. Labels come from the metadata endpoint:
TF Serving's status endpoint ignores a label, while metadata resolves it and answers
only when the version behind it is AVAILABLE -- exactly "this label serves now".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

from infra.rollout.errors import RolloutError


@dataclass(frozen=True)
class VersionState:
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error: str = ""  # why a load ended, when it failed


class ModelServer:
    """A read-only view of one model on a model server."""

    def __init__(self, url: str, model: str, timeout_seconds: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self._model_url = f"{self.url}/v1/models/{model}"
        self._timeout = timeout_seconds

    def versions(self) -> dict[int, VersionState]:
        """Every version the server knows, with its state; {} when it knows none."""
        response = self._get(self._model_url)
        if response.status_code == 404:
            return {}
        body = self._json(response)
        return {
            int(entry["version"]): VersionState(
                entry["state"], entry.get("status", {}).get("error_message", "")
            )
            for entry in body.get("model_version_status", [])
        }

    def available(self) -> frozenset[int]:
        return frozenset(v for v, s in self.versions().items() if s.state == "AVAILABLE")

    def label_version(self, label: str) -> int | None:
        """The AVAILABLE version `label` serves, or None (unknown label or nothing loaded)."""
        response = self._get(f"{self._model_url}/labels/{label}/metadata")
        if response.status_code in (400, 404):
            return None
        return int(self._json(response)["model_spec"]["version"])

    def _get(self, url: str) -> requests.Response:
        try:
            return requests.get(url, timeout=self._timeout)
        except requests.RequestException as error:
            raise RolloutError(
                f"the model server at {self.url} is unreachable ({type(error).__name__})"
            ) from None

    def _json(self, response: requests.Response) -> dict:
        if response.status_code != 200:
            raise RolloutError(
                f"the model server answered {response.status_code}: {response.text[:200]}"
            )
        return response.json()


def wait_for(condition: Callable[[], str | None], timeout: float, poll_seconds: float) -> float:
    """Poll `condition` (None when met, else what is still missing) until met; seconds taken.

    Raises RolloutError naming what was still missing at the deadline.
    """
    started = time.monotonic()
    while True:
        missing = condition()
        if missing is None:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RolloutError(f"after {timeout:g} s {missing}")
        time.sleep(poll_seconds)
