"""ID tokens for a Cloud Run model server that checks its invokers (recognizer/identity.py).

The metadata server exists only on Google Cloud: a local HTTP server answers as it does
(a JWT as the body). What is tested is that the model client asks it for the model
server's audience with the Metadata-Flavor header, sends the token to the model server,
reuses it until shortly before it expires, and turns a failure into ModelUnavailable.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from recognizer.config import Settings
from recognizer.identity import REFRESH_BEFORE_SECONDS, IdentityTokens
from recognizer.model_client import ModelClient, ModelUnavailable
from tests.function.test_model_client import ScriptedServer, url_of


def jwt(expires: float) -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part({'exp': int(expires), 'aud': 'x'})}.c2ln"


@pytest.fixture
def servers() -> Iterator[tuple[ScriptedServer, ScriptedServer]]:
    """A stand-in metadata server and a scripted model server."""
    pair = (ScriptedServer(), ScriptedServer())
    for server in pair:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield pair
    for server in pair:
        server.shutdown()
        server.server_close()


def client(metadata: ScriptedServer, model: ScriptedServer) -> ModelClient:
    tokens = IdentityTokens(url_of(model), metadata_url=f"{url_of(metadata)}/identity")
    return ModelClient(url_of(model), "mnist", 5.0, 5.0, auth_headers=tokens.headers)


def test_the_token_for_the_model_servers_audience_goes_with_every_request(servers):
    metadata, model = servers
    token = jwt(time.time() + 3600)
    metadata.ok_body = token.encode()
    model.ok_body = json.dumps({"model_version_status": []}).encode()
    answer = client(metadata, model)
    answer.versions()
    answer.versions()
    (asked,) = metadata.asked  # fetched once, then reused
    query = parse_qs(urlsplit(asked[1]).query)
    assert query["audience"] == [url_of(model)]
    assert asked[2]["Metadata-Flavor"] == "Google"
    assert [headers["Authorization"] for _, _, headers, _ in model.asked] == [f"Bearer {token}"] * 2


def test_a_token_near_its_expiry_is_fetched_again(servers):
    metadata, model = servers
    metadata.ok_body = jwt(time.time() + REFRESH_BEFORE_SECONDS - 1).encode()
    model.ok_body = json.dumps({"model_version_status": []}).encode()
    answer = client(metadata, model)
    answer.versions()
    answer.versions()
    assert len(metadata.asked) == 2


@pytest.mark.parametrize(("status", "body"), [(500, b""), (200, b"not-a-jwt")])
def test_no_token_is_model_unavailable_and_nothing_reaches_the_model_server(servers, status, body):
    metadata, model = servers
    metadata.script, metadata.ok_body = [status], body
    with pytest.raises(ModelUnavailable, match="identity token"):
        client(metadata, model).versions()
    assert model.asked == []


def test_off_by_default_and_no_header_without_it(servers):
    _, model = servers
    assert Settings.from_env({}).model_server_id_token is False
    assert Settings.from_env({"MODEL_SERVER_ID_TOKEN": "true"}).model_server_id_token is True
    model.ok_body = json.dumps({"model_version_status": []}).encode()
    ModelClient(url_of(model), "mnist", 5.0, 5.0).versions()
    assert "Authorization" not in model.asked[0][2]
