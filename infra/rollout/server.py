"""What the model server reports, through the function's own TF Serving REST client.

Version states come from the status endpoint. Labels come from the metadata endpoint:
TF Serving's status endpoint ignores a label, while metadata resolves it and answers
only when the version behind it is AVAILABLE -- exactly "this label serves now".
"""

from __future__ import annotations

from infra.rollout.errors import RolloutError
from recognizer.model_client import (
    ModelClient,
    ModelNotServing,
    ModelServerError,
    ModelTimeout,
    ModelUnreachable,
    UnexpectedStatus,
    UnknownModel,
    VersionState,
)


class ServerView:
    """A read-only view of one model on a model server; its failures are RolloutErrors."""

    def __init__(self, url: str, model: str, timeout_seconds: float = 5.0) -> None:
        self.url = url.rstrip("/")
        # No label cache: the rollout asks where a label points now, every time.
        self._client = ModelClient(self.url, model, timeout_seconds, 0.0, pool_size=1)

    def versions(self) -> dict[int, VersionState]:
        """Every version the server knows, with its state; {} when it knows none."""
        try:
            return self._client.versions()
        except ModelNotServing:
            return {}
        except ModelServerError as error:
            raise self._rollout_error(error) from None

    def available(self) -> frozenset[int]:
        return frozenset(v for v, s in self.versions().items() if s.state == "AVAILABLE")

    def label_version(self, label: str) -> int | None:
        """The AVAILABLE version `label` serves, or None (unknown label or nothing loaded)."""
        try:
            return self._client.label_version(label)
        except UnknownModel:  # ModelNotServing among them
            return None
        except UnexpectedStatus as error:
            if error.status == 400:
                return None
            raise self._rollout_error(error) from None
        except ModelServerError as error:
            raise self._rollout_error(error) from None

    def _rollout_error(self, error: ModelServerError) -> RolloutError:
        if isinstance(error, ModelUnreachable):
            return RolloutError(f"the model server at {self.url} is unreachable ({error.kind})")
        if isinstance(error, ModelTimeout):
            return RolloutError(f"the model server at {self.url} is unreachable (timeout)")
        if isinstance(error, UnexpectedStatus):
            text = error.body.decode("utf-8", "replace")[:200]
            return RolloutError(f"the model server answered {error.status}: {text}")
        return RolloutError(f"the model server at {self.url}: {error}")
