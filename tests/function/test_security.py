"""Who may call what (API_TOKEN), from which pages (CORS), and how much (the MAX_* limits).

Through functions-framework's own app against the live model server, with the settings
read from the environment as in production.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import uuid

import functions_framework
import numpy as np
import pytest
from PIL import Image

from recognizer import responses
from recognizer.config import Settings
from tests.conftest import ROOT

TOKEN = "t0ken-for-tests-0123456789abcdef"
ORIGIN = "https://digits.example.org"
ACCESS_AND_LIMITS = (
    "API_TOKEN",
    "UPLOADS_PER_CLIENT_PER_HOUR",
    "PREDICT_REQUIRES_TOKEN",
    "CORS_ALLOWED_ORIGINS",
    "MAX_REQUEST_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_REQUEST_PIXELS",
    "MAX_BATCH_IMAGES",
)
HISTORY_PATHS = [
    "/predictions",
    f"/predictions/{uuid.uuid1()}",
    f"/predictions/{uuid.uuid1()}/image",
]


def png(side: int = 28) -> bytes:
    """A digit-like picture: a white stroke on black."""
    pixels = np.zeros((side, side), dtype=np.uint8)
    pixels[side // 4 : 3 * side // 4, side // 2 - 1 : side // 2 + 2] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"]
    return error


class CountingStream(io.RawIOBase):
    """A request body of `size` zero bytes that counts how much of it the server reads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.position = 0
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True  # the test client measures the body by seeking, which reads nothing

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.position = (
            offset + {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        )
        return self.position

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self.size - self.position))
        buffer[:n] = b"\0" * n
        self.position += n
        self.read_bytes += n
        return n


@pytest.fixture
def make_client(function_env, monkeypatch):
    """A test client of the real app, started with these extra environment variables."""

    for name in ACCESS_AND_LIMITS:  # the host's own settings must not leak into a test
        monkeypatch.delenv(name, raising=False)

    def make(**env: str):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        app = functions_framework.create_app("recognize", str(ROOT / "function" / "main.py"))
        return app.test_client()

    return make


# --- settings -----------------------------------------------------------------------------


def test_by_default_nothing_needs_a_token_and_cors_is_off():
    settings = Settings.from_env({})
    assert settings.api_token is None and settings.predict_requires_token is False
    assert settings.cors_allowed_origins == frozenset()


def test_the_token_stays_out_of_the_settings_repr():
    settings = Settings.from_env({"API_TOKEN": TOKEN})
    assert settings.api_token == TOKEN
    assert TOKEN not in repr(settings)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PREDICT_REQUIRES_TOKEN": "true"}, ["PREDICT_REQUIRES_TOKEN", "API_TOKEN"]),
        ({"PREDICT_REQUIRES_TOKEN": "maybe", "API_TOKEN": TOKEN}, ["PREDICT_REQUIRES_TOKEN"]),
        ({"API_TOKEN": f" {TOKEN}"}, ["API_TOKEN"]),
        ({"CORS_ALLOWED_ORIGINS": "https://ok.example, example.org"}, ["CORS_ALLOWED_ORIGINS"]),
        ({"CORS_ALLOWED_ORIGINS": "https://example.org/app"}, ["CORS_ALLOWED_ORIGINS"]),
        ({"MAX_REQUEST_BYTES": "0"}, ["MAX_REQUEST_BYTES"]),
        ({"MAX_IMAGE_PIXELS": "lots"}, ["MAX_IMAGE_PIXELS"]),
        ({"MAX_BATCH_IMAGES": "1.5"}, ["MAX_BATCH_IMAGES"]),
        ({"MAX_BATCH_IMAGES": "nan"}, ["MAX_BATCH_IMAGES"]),
    ],
)
def test_a_bad_setting_is_a_startup_error_naming_the_variables(env, named):
    with pytest.raises(ValueError) as refused:
        Settings.from_env(env)
    for name in named:
        assert name in str(refused.value)
    assert TOKEN not in str(refused.value)


def test_the_settings_are_read_from_the_environment():
    settings = Settings.from_env(
        {
            "API_TOKEN": TOKEN,
            "PREDICT_REQUIRES_TOKEN": "TRUE",
            "CORS_ALLOWED_ORIGINS": f"{ORIGIN}/, http://localhost:3000",
            "MAX_REQUEST_BYTES": "1000",
            "MAX_IMAGE_PIXELS": "1e6",
            "MAX_BATCH_IMAGES": "3",
        }
    )
    assert settings.predict_requires_token is True
    assert settings.cors_allowed_origins == {ORIGIN, "http://localhost:3000"}
    assert (settings.max_request_bytes, settings.max_image_pixels) == (1000, 1_000_000)
    assert settings.max_batch_images == 3


def test_the_function_refuses_to_start_when_predict_needs_a_token_that_is_not_set(make_client):
    with pytest.raises(SystemExit, match="PREDICT_REQUIRES_TOKEN is true but API_TOKEN is unset"):
        make_client(PREDICT_REQUIRES_TOKEN="true")


# --- API_TOKEN ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", HISTORY_PATHS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("wrong"),
        bearer(TOKEN + "x"),
        {"Authorization": TOKEN},
        {"Authorization": "Bearer"},
    ],
    ids=["none", "wrong", "longer", "no-scheme", "no-token"],
)
def test_the_history_needs_the_token_when_one_is_set(make_client, path, headers):
    client = make_client(API_TOKEN=TOKEN)
    response = client.get(path, headers=headers)
    assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert TOKEN not in response.get_data(as_text=True) and TOKEN not in str(response.headers)


def test_with_the_token_the_history_answers(make_client):
    client = make_client(API_TOKEN=TOKEN)
    prediction = client.post("/predict", data=png(), content_type="image/png").get_json()
    (recorded,) = prediction["predictions"]
    history = client.get("/predictions", headers=bearer())
    assert [p["id"] for p in history.get_json()["predictions"]] == [recorded["id"]]
    lowercase = {"Authorization": f"bearer {TOKEN}"}
    assert client.get(f"/predictions/{recorded['id']}", headers=lowercase).status_code == 200
    image = client.get(f"/predictions/{recorded['id']}/image", headers=bearer())
    assert image.status_code == 200 and image.mimetype == "image/png"


def test_without_a_token_set_the_history_is_open(make_client):
    assert make_client().get("/predictions").status_code == 200


def test_health_readiness_and_the_page_stay_open(make_client):
    client = make_client(API_TOKEN=TOKEN, PREDICT_REQUIRES_TOKEN="true")
    for path in ("/healthz", "/readyz", "/"):
        assert client.get(path).status_code == 200, path


def test_predict_needs_the_token_only_when_configured_to(make_client):
    open_predict = make_client(API_TOKEN=TOKEN)
    assert open_predict.post("/predict", data=png(), content_type="image/png").status_code == 200

    client = make_client(API_TOKEN=TOKEN, PREDICT_REQUIRES_TOKEN="true")
    refused = client.post("/predict", data=png(), content_type="image/png")
    assert_error(refused, 401, "unauthorized")
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    before = client.get("/predictions", headers=bearer()).get_json()["predictions"]
    allowed = client.post("/predict", data=png(), content_type="image/png", headers=bearer())
    assert allowed.status_code == 200
    after = client.get("/predictions", headers=bearer()).get_json()["predictions"]
    assert len(after) == len(before) + 1


def test_a_refused_predict_is_not_read(make_client):
    """An unauthenticated client cannot make the function read (and buffer) its upload."""
    client = make_client(API_TOKEN=TOKEN, PREDICT_REQUIRES_TOKEN="true")
    body = CountingStream(5 * 1024 * 1024)
    response = client.post(
        "/predict", input_stream=body, content_length=body.size, content_type="image/png"
    )
    assert_error(response, 401, "unauthorized")
    assert body.read_bytes == 0


# --- CORS ---------------------------------------------------------------------------------


def preflight(client, path: str, origin: str = ORIGIN, method: str = "POST"):
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )


def cors_headers(response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def test_cors_is_off_by_default(make_client):
    client = make_client()
    answer = client.post(
        "/predict", data=png(), content_type="image/png", headers={"Origin": ORIGIN}
    )
    assert_error(answer, 403, "cross_site_request")  # another site's page may not write
    assert cors_headers(answer) == {}
    ask = preflight(client, "/predict")
    assert ask.status_code == 204 and cors_headers(ask) == {}


def test_a_listed_origin_gets_a_preflight_answer(make_client):
    client = make_client(CORS_ALLOWED_ORIGINS=f"http://localhost:3000,{ORIGIN}")
    for path, method in [("/predict", "POST"), ("/predictions", "GET")] + [
        (path, "GET") for path in HISTORY_PATHS[1:]
    ]:
        response = preflight(client, path, method=method)
        assert response.status_code == 204, path
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert method in response.headers["Access-Control-Allow-Methods"].split(", ")
        allowed = {h.strip() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
        assert {
            "Content-Type",
            "Authorization",
            "Idempotency-Key",
            "X-Client-Id",
            "X-Request-Id",
        } <= allowed
        assert int(response.headers["Access-Control-Max-Age"]) > 0
        assert "Origin" in response.headers["Vary"]


def test_a_listed_origin_may_read_answers_and_errors(make_client):
    client = make_client(CORS_ALLOWED_ORIGINS=ORIGIN, API_TOKEN=TOKEN)
    answer = client.post(
        "/predict", data=png(), content_type="image/png", headers={"Origin": ORIGIN}
    )
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Origin" in answer.headers["Vary"]
    assert "X-Request-Id" in answer.headers["Access-Control-Expose-Headers"]
    refused = client.get("/predictions", headers={"Origin": ORIGIN})
    assert refused.status_code == 401  # the page can read why, and ask for the token
    assert refused.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_a_preflight_needs_no_token(make_client):
    client = make_client(CORS_ALLOWED_ORIGINS=ORIGIN, API_TOKEN=TOKEN, PREDICT_REQUIRES_TOKEN="1")
    for path in ("/predict", "/predictions"):
        assert preflight(client, path).status_code == 204


def test_an_unlisted_origin_gets_no_cors_headers(make_client):
    client = make_client(CORS_ALLOWED_ORIGINS=ORIGIN)
    for origin in ("https://evil.example", ORIGIN + ".evil.example", "null"):
        ask = preflight(client, "/predict", origin=origin)
        assert ask.status_code == 204 and cors_headers(ask) == {}, origin
        answer = client.get("/predictions", headers={"Origin": origin})
        assert answer.status_code == 200 and cors_headers(answer) == {}, origin


def test_a_star_lets_every_origin_in_by_name(make_client):
    client = make_client(CORS_ALLOWED_ORIGINS="*")
    for origin in (ORIGIN, "http://localhost:8000"):
        response = preflight(client, "/predict", origin=origin)
        assert response.headers["Access-Control-Allow-Origin"] == origin


def test_only_the_api_paths_take_part_in_cors(make_client):
    client = make_client(CORS_ALLOWED_ORIGINS="*")
    for path in ("/", "/healthz", "/readyz"):
        response = client.get(path, headers={"Origin": ORIGIN})
        assert response.status_code == 200 and cors_headers(response) == {}, path
    assert_error(preflight(client, "/healthz"), 405, "method_not_allowed")


# --- limits, all enforced before any image is decoded -------------------------------------


@pytest.mark.parametrize("path", ["/predict", "/predictions", "/nowhere"])
def test_a_body_over_max_request_bytes_is_refused_unread(make_client, path):
    client = make_client(MAX_REQUEST_BYTES="4096")
    body = CountingStream(4097)
    response = client.post(
        path, input_stream=body, content_length=body.size, content_type="image/png"
    )
    error = assert_error(response, 413, "request_too_large")
    assert "4,096" in error["message"]
    assert body.read_bytes == 0


def test_a_body_within_max_request_bytes_is_read(make_client):
    image = png()
    client = make_client(MAX_REQUEST_BYTES=str(len(image)))
    assert client.post("/predict", data=image, content_type="image/png").status_code == 200


def test_max_image_pixels_is_checked_from_the_header_before_decoding(make_client):
    client = make_client(MAX_IMAGE_PIXELS="100")
    image = png(28)  # 784 pixels
    error = assert_error(
        client.post("/predict", data=image, content_type="image/png"), 413, "image_too_large"
    )
    assert "100" in error["message"]
    # Only the header is intact: decoding would fail with not_an_image, the limit comes first.
    header_only = image[:64]
    response = client.post("/predict", data=header_only, content_type="image/png")
    assert_error(response, 413, "image_too_large")


def test_max_batch_images_is_checked_before_decoding(make_client):
    client = make_client(MAX_BATCH_IMAGES="2")
    good = base64.b64encode(png()).decode()
    assert client.post("/predict", json={"images": [good, good]}).status_code == 200
    not_images = [base64.b64encode(b"not an image").decode()] * 3
    error = assert_error(
        client.post("/predict", json={"images": not_images}), 413, "too_many_images"
    )
    assert "limit is 2" in error["message"]
    # Counted before any base64 is decoded: three broken strings are still too many.
    not_base64 = ["%%% not base64 %%%"] * 3
    assert_error(client.post("/predict", json={"images": not_base64}), 413, "too_many_images")


def test_max_request_pixels_bounds_a_whole_batch_before_any_image_is_decoded(make_client):
    """Each image may be within MAX_IMAGE_PIXELS while the batch is not: decoding costs
    memory and CPU by the pixel, so the sum is checked from the headers first."""
    client = make_client(MAX_REQUEST_PIXELS=str(2 * 28 * 28))
    good = base64.b64encode(png(28)).decode()
    assert client.post("/predict", json={"images": [good, good]}).status_code == 200
    # The third image is only a header: had anything been decoded, it would be not_an_image.
    header_only = base64.b64encode(png(28)[:64]).decode()
    error = assert_error(
        client.post("/predict", json={"images": [good, good, header_only]}),
        413,
        "image_too_large",
    )
    assert "2,352 pixels" in error["message"] and "1,568" in error["message"]


# --- a page of another site may not write (issue 24) --------------------------------------


def history_size(client) -> int:
    return len(client.get("/predictions", query_string={"limit": 100}).get_json()["predictions"])


@pytest.mark.parametrize(
    "headers",
    [
        {
            "Origin": "https://evil.example",
            "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Mode": "no-cors",
        },
        {
            "Origin": "https://evil.example",
            "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Mode": "cors",
        },
        {
            "Origin": "http://localhost.evil:1",
            "Sec-Fetch-Site": "same-site",
            "Sec-Fetch-Mode": "navigate",
        },
        {"Origin": "https://evil.example"},  # a browser that sends no Sec-Fetch-* headers
        {"Origin": "null"},  # a sandboxed frame or a data: page
    ],
)
def test_a_cross_site_post_creates_no_record(make_client, headers):
    client = make_client()
    fields = {"image": (io.BytesIO(png()), "digit.png", "image/png")}
    answer = client.post(
        "/predict", data=fields, content_type="multipart/form-data", headers=headers
    )
    assert_error(answer, 403, "cross_site_request")
    assert history_size(client) == 0


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, a script: no browser, no Origin
        {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"},
        {"Origin": "http://localhost"},  # the page's own origin, from an older browser
        {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"},  # typed in
    ],
)
def test_the_page_and_clients_without_a_browser_still_write(make_client, headers):
    client = make_client()
    answer = client.post("/predict", data=png(), content_type="image/png", headers=headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert history_size(client) == 1


def test_a_listed_origin_writes_with_a_cors_request_only(make_client):
    client = make_client(CORS_ALLOWED_ORIGINS=ORIGIN)
    cors = {"Origin": ORIGIN, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}
    assert (
        client.post("/predict", data=png(), content_type="image/png", headers=cors).status_code
        == 200
    )
    no_cors = {**cors, "Sec-Fetch-Mode": "no-cors"}
    answer = client.post("/predict", data=png(), content_type="image/png", headers=no_cors)
    assert_error(answer, 403, "cross_site_request")
    assert history_size(client) == 1


def test_a_cross_site_correction_is_refused_before_its_token_is_looked_at(make_client):
    client = make_client()
    answer = client.put(
        f"/predictions/{uuid.uuid1()}/feedback",
        json={"digit": 1, "token": "x"},
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert_error(answer, 403, "cross_site_request")


# --- headers: no framing, no sniffing, no referrer, no caching of records ------------------


def test_every_answer_carries_the_security_headers(make_client):
    client = make_client()
    for response in (
        client.get("/healthz"),
        client.get("/predictions"),
        client.get("/no/such/path"),
        client.post("/predict", data=b"junk", content_type="image/png"),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["X-Frame-Options"] == "DENY"
        policy = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
        assert response.headers["Cache-Control"] == "no-store"


def test_the_page_policy_allows_exactly_its_own_inline_blocks(make_client):
    page = make_client().get("/")
    policy = dict(
        directive.strip().split(" ", 1)
        for directive in page.headers["Content-Security-Policy"].split(";")
    )
    html = page.get_data()
    blocks = re.findall(rb"<(script|style)>(.*?)</\1>", html, re.DOTALL)
    assert {kind for kind, _ in blocks} == {b"script", b"style"}
    for kind, body in blocks:
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        assert f"'sha256-{digest}'" in policy[f"{kind.decode()}-src"].split()
    assert (
        "'unsafe-inline'" not in policy["script-src"]
        and "'unsafe-eval'" not in policy["script-src"]
    )
    assert policy["frame-ancestors"] == "'none'"
    assert page.headers["X-Frame-Options"] == "DENY"


def test_a_changed_page_gets_its_own_hashes():
    first = responses.page_policy(b"<script>one()</script>")
    second = responses.page_policy(b"<script>two()</script>")
    assert first != second
    assert responses.page_policy(b'<script src="app.js"></script>') == responses.page_policy(b"")


def test_an_upload_browsers_do_not_show_is_a_download():
    assert responses.image_headers("image/png", "x")["Content-Disposition"] == "inline"
    tiff = responses.image_headers("image/tiff", "abc")
    assert tiff["Content-Disposition"] == 'attachment; filename="abc.tiff"'
    assert "max-age" in tiff["Cache-Control"]


def test_a_correction_body_over_its_size_is_not_read(make_client):
    """A 10 MiB correction is refused from its Content-Length: parsed, it was a million
    objects (issue 24: +1.4 GiB of peak memory for eight at a time, every answer a 401)."""
    client = make_client(API_TOKEN=TOKEN, PREDICT_REQUIRES_TOKEN="true")
    body = CountingStream(10 * 1024 * 1024)
    response = client.put(
        f"/predictions/{uuid.uuid1()}/feedback",
        input_stream=body,
        content_length=body.size,
        content_type="application/json",
    )
    assert_error(response, 413, "request_too_large")
    assert body.read_bytes == 0


def test_a_chunked_correction_is_read_no_further_than_its_limit(make_client):
    client = make_client()
    body = CountingStream(10 * 1024 * 1024)
    response = client.put(
        f"/predictions/{uuid.uuid1()}/feedback",
        input_stream=body,
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},  # as a server says of a chunked body
    )
    assert_error(response, 413, "request_too_large")
    assert body.read_bytes <= 64 * 1024  # the stream's own read-ahead, not the body


# --- a quota of records per client (issue 24) ----------------------------------------------


def test_uploads_past_the_hourly_quota_are_429_with_retry_after_and_make_no_record(make_client):
    client = make_client(UPLOADS_PER_CLIENT_PER_HOUR="3")
    fields = {"images": [base64.b64encode(png()).decode()] * 2}
    assert client.post("/predict", json=fields).status_code == 200  # two records
    assert client.post("/predict", data=png(), content_type="image/png").status_code == 200
    refused = client.post("/predict", data=png(), content_type="image/png")
    assert_error(refused, 429, "too_many_uploads")
    assert 3000 < int(refused.headers["Retry-After"]) <= 3600
    assert history_size(client) == 3
    other = client.post(
        "/predict", data=png(), content_type="image/png", headers={"X-Client-Id": "someone-else"}
    )
    assert other.status_code == 200  # a quota per client, not for everyone


def test_the_api_token_is_not_limited_by_the_upload_quota(make_client):
    client = make_client(UPLOADS_PER_CLIENT_PER_HOUR="1", API_TOKEN=TOKEN)
    for _ in range(3):
        answer = client.post("/predict", data=png(), content_type="image/png", headers=bearer())
        assert answer.status_code == 200
