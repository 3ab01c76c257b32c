"""Identity tokens for a model server on Cloud Run that lets in only its invokers.

Deployed by `python -m infra.deploy run-serving`, TensorFlow Serving answers only requests
that carry a Google-signed ID token of an account with roles/run.invoker on it: Cloud
Run checks the token before TF Serving, which has no authentication of its own, sees the
request. The metadata server of the instance the function runs on mints such a token for
its service account with the model server's URL as audience. A token lasts an hour; one
is reused until REFRESH_BEFORE_SECONDS before it expires.

The metadata server exists only on Google Cloud: the tests stand in for it with a local
HTTP server answering as it does, so the call to the real one is not tested here.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import urllib3
from urllib3 import exceptions as http

from recognizer.model_client import ModelUnavailable

METADATA_IDENTITY_URL = (
    "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/identity"
)
REFRESH_BEFORE_SECONDS = 300.0


class IdentityTokens:
    """`Authorization` headers with a cached ID token for one audience."""

    def __init__(
        self,
        audience: str,
        *,
        metadata_url: str = METADATA_IDENTITY_URL,
        timeout_seconds: float = 2.0,
    ) -> None:
        self._audience = audience
        self._url = metadata_url
        self._timeout = timeout_seconds
        self._pool = urllib3.PoolManager(maxsize=1)
        self._lock = threading.Lock()
        self._token = ""
        self._refresh_at = 0.0

    def headers(self) -> dict[str, str]:
        """The header to send; fetches a token first when none is fresh."""
        with self._lock:
            if time.time() >= self._refresh_at:
                self._token, expires = self._fetch()
                self._refresh_at = expires - REFRESH_BEFORE_SECONDS
            return {"Authorization": f"Bearer {self._token}"}

    def _fetch(self) -> tuple[str, float]:
        try:
            response = self._pool.request(
                "GET",
                self._url,
                fields={"audience": self._audience, "format": "full"},
                headers={"Metadata-Flavor": "Google"},
                timeout=self._timeout,
                retries=False,
                redirect=False,
            )
        except http.HTTPError as error:
            raise ModelUnavailable(f"no identity token: {type(error).__name__}") from None
        if response.status != 200:
            raise ModelUnavailable(f"no identity token: the metadata server said {response.status}")
        token = response.data.decode("ascii", "replace").strip()
        return token, _expiry(token)


def _expiry(token: str) -> float:
    """The `exp` claim of a JWT (not verified: Cloud Run verifies it, we only time it)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        raise ModelUnavailable("the metadata server's identity token is malformed") from None
