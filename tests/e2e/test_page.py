"""The web page at `GET /`, in a real browser (Debian's Chromium via Playwright), on the real stack.

Each test leaves a screenshot under test-artifacts/page/. `DOC_SCREENSHOTS=1` also rewrites
docs/screenshots/{desktop,phone}.png from the screenshot test. Without Chromium at
/usr/bin/chromium or without Playwright the module is skipped, saying which is missing.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from PIL import Image, ImageOps

from recognizer import feedback
from tests.conftest import ROOT
from tests.support.function_server import running_function

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page, Route

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.exists():
    pytest.skip(
        f"Chromium is not installed at {CHROMIUM} (`make test` installs Debian's chromium)",
        allow_module_level=True,
    )
playwright_api = pytest.importorskip(
    "playwright.sync_api",
    reason="Playwright is not importable (`make test` installs it from requirements-dev.txt)",
)
expect = playwright_api.expect

# No browser download is possible here: Debian's Chromium, and flags that keep it off the network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 740}
ARTIFACTS = ROOT / "test-artifacts" / "page"
DOC_SCREENSHOTS = ROOT / "docs" / "screenshots"
SAMPLES = ROOT / "tests" / "data" / "samples"
DIGIT_NAMES = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4}
DIGIT_NAMES |= {"five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}

# Strokes as fractions of the pad: mouse paths the committed model reads with ~100% confidence.
Stroke = list[tuple[float, float]]
SEVEN: list[Stroke] = [[(0.25, 0.22), (0.75, 0.22), (0.45, 0.82)]]
# The same seven with its bar along the pad's top edge: the 20 px ink runs off the pad.
SEVEN_AT_THE_EDGE: list[Stroke] = [[(0.25, 0.01), (0.75, 0.01), (0.45, 0.62)]]
DOT: list[Stroke] = [[(0.5, 0.5)]]
THREE: list[Stroke] = [
    [(0.30, 0.25), (0.45, 0.17), (0.62, 0.20), (0.68, 0.32), (0.60, 0.45), (0.45, 0.50)],
    [(0.45, 0.50), (0.62, 0.55), (0.70, 0.68), (0.62, 0.80), (0.45, 0.84), (0.30, 0.77)],
]
SAMPLE_FILES = sorted(SAMPLES.glob("*.[pj][np]g"))
PREDICT = re.compile(r"/predict\?")
HISTORY = re.compile(r"/predictions\?")
ONE_RECORD = re.compile(r"/predictions/[0-9a-f-]+$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
API_TOKEN = "page-test-token-0123456789"
FEEDBACK_SECRET = "page-test-feedback-secret-0123456789abcdef"
FEEDBACK = re.compile(r"/predictions/[^/?]+/feedback$")
KEPT = "digit-recognizer.predictions"  # the page's localStorage key for its predictions


@pytest.fixture(scope="session")
def browser(playwright_driver, tmp_path_factory) -> Iterator[BrowserContext]:
    """One Chromium for the session, with a fresh profile (no state from any earlier run)."""
    context = playwright_driver.chromium.launch_persistent_context(
        str(tmp_path_factory.mktemp("chromium-profile")),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_ARGS,
        viewport=DESKTOP,
        locale="en-US",
        timezone_id="UTC",
    )
    context.set_default_timeout(15_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def hidpi_page(playwright_driver, page_url, request) -> Iterator[Page]:
    """The page in a context of its own with deviceScaleFactor 2, as on most phones and laptops."""
    chromium = playwright_driver.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
    context = chromium.new_context(
        device_scale_factor=2, viewport=DESKTOP, locale="en-US", timezone_id="UTC"
    )
    context.set_default_timeout(15_000)
    try:
        yield from open_page(context, page_url, request)
    finally:
        context.close()
        chromium.close()


@pytest.fixture
def clocked_page(playwright_driver, page_url, request) -> Iterator[Page]:
    """The page in a browser of its own on Playwright's paused fake clock (a clock is installed
    for a whole browser context, and the session's is shared): time moves only by run_for."""
    chromium = playwright_driver.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
    context = chromium.new_context(viewport=DESKTOP, locale="en-US", timezone_id="UTC")
    context.set_default_timeout(15_000)
    context.clock.install(time=0)
    context.clock.pause_at(1000)
    try:
        yield from open_page(context, page_url, request)
    finally:
        context.close()
        chromium.close()


@pytest.fixture(scope="module")
def protected_url(model_server, tmp_path_factory) -> Iterator[str]:
    """The function with API_TOKEN set and PREDICT_REQUIRES_TOKEN: nothing but the page is open."""
    sqlite_path = tmp_path_factory.mktemp("protected") / "predictions.sqlite3"
    settings = {"API_TOKEN": API_TOKEN, "PREDICT_REQUIRES_TOKEN": "true"}
    with running_function(model_server, sqlite_path, **settings) as url:
        yield url


@pytest.fixture(scope="module")
def page_url(model_server, tmp_path_factory) -> Iterator[str]:
    """The function as `make demo` runs it: default settings and a FEEDBACK_SECRET, so each
    prediction it answers carries a feedback token."""
    sqlite_path = tmp_path_factory.mktemp("page") / "predictions.sqlite3"
    with running_function(model_server, sqlite_path, FEEDBACK_SECRET=FEEDBACK_SECRET) as url:
        yield url


@pytest.fixture
def page(browser, page_url, request) -> Iterator[Page]:
    """The page, freshly loaded; fails the test on any uncaught script error, keeps a screenshot."""
    yield from open_page(browser, page_url, request)


@pytest.fixture
def protected_page(browser, protected_url, request) -> Iterator[Page]:
    """The page of the function that needs the API token."""
    yield from open_page(browser, protected_url, request)


def open_page(browser: BrowserContext, url: str, request: Any) -> Iterator[Page]:
    tab = browser.new_page()
    tab.set_viewport_size(DESKTOP)
    script_errors: list[str] = []
    tab.on("pageerror", lambda error: script_errors.append(str(error)))
    # The page runs under its Content-Security-Policy (issue 24): anything it blocks is
    # reported on the console, and fails the test like a script error.
    tab.on(
        "console",
        lambda message: (
            "Content Security Policy" in message.text
            and script_errors.append(f"CSP violation: {message.text}")
        ),
    )
    loaded = tab.goto(f"{url}/")
    assert loaded is not None and "frame-ancestors 'none'" in loaded.headers.get(
        "content-security-policy", ""
    )
    expect(tab.locator("#history")).to_have_attribute("aria-busy", "false")
    yield tab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^\w.-]+", "_", request.node.name)
    tab.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)
    tab.close()
    assert not script_errors, f"uncaught errors in the page: {script_errors}"


def draw(page: Page, strokes: list[Stroke]) -> None:
    """Trace strokes with real mouse events, as a person would on the pad."""
    box = page.locator("#pad").bounding_box()
    assert box is not None
    for stroke in strokes:
        points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point, steps=8)
        page.mouse.up()


def ink(page: Page) -> int:
    """How many pad pixels are inked: what Undo and Clear must change."""
    return page.evaluate(
        """() => {
            const pad = document.getElementById("pad");
            const { data } = pad.getContext("2d").getImageData(0, 0, pad.width, pad.height);
            let dark = 0;
            for (let i = 0; i < data.length; i += 4) if (data[i] < 128) dark++;
            return dark;
        }"""
    )


def is_predict(response: Any) -> bool:
    return response.request.method == "POST" and "/predict" in response.url


def submitted(page: Page, action: Callable[[], None]) -> dict[str, Any]:
    """Do `action`, wait until the page shows the prediction it caused, return what it shows.

    Read from the page, not the response: that is what the person sees, and Chromium may
    already have dropped a response body from its inspector cache.
    """
    shown = page.locator("#answer")
    before = shown.get_attribute("data-id")
    with page.expect_response(is_predict) as answer:
        action()
    assert answer.value.status == 200, f"POST /predict answered {answer.value.status}"
    expect(shown).to_be_visible()
    if before:
        expect(shown).not_to_have_attribute("data-id", before)
    expect(shown).to_have_attribute("data-id", UUID)
    return {"id": shown.get_attribute("data-id"), "digit": int(page.inner_text("#digit"))}


def failed(page: Page, action: Callable[[], None]) -> None:
    """Do `action` and wait until the page shows an error."""
    action()
    expect(page.locator("#error")).to_be_visible()


def natural_size(page: Page, selector: str) -> list[int]:
    locator = page.locator(selector)
    expect(locator).to_have_js_property("complete", True)
    return locator.evaluate("image => [image.naturalWidth, image.naturalHeight]")


def file_payload(name: str, mime_type: str, content: bytes) -> dict[str, Any]:
    return {"name": name, "mimeType": mime_type, "buffer": content}


def digit_of(sample: Path) -> int:
    return DIGIT_NAMES[sample.stem.split("-")[0]]


def api_error(route: Route, status: int, code: str, message: str, **headers: str) -> None:
    route.fulfill(
        status=status,
        content_type="application/json",
        headers=headers,
        body=json.dumps({"error": {"code": code, "message": message}}),
    )


def model_input_png() -> str:
    """A real 28x28 PNG for a faked answer's input_png: a bar of ink on black, as the model sees."""
    picture = Image.new("L", (28, 28), 0)
    picture.paste(255, (10, 4, 18, 24))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def faked_prediction(digit: int, confidence: float, **verdict: Any) -> dict[str, Any]:
    """A prediction as the API words it, with `verdict`'s fields (verdict, candidates, reasons)."""
    probabilities = [round((1 - confidence) / 9, 6)] * 10
    probabilities[digit] = confidence
    return {
        "id": str(uuid.uuid4()),
        "digit": digit,
        "confidence": confidence,
        "probabilities": probabilities,
        "model": {"name": "mnist-cnn", "version": 3, "label": "stable"},
        "created_at": "2024-05-01T12:00:00.000+00:00",
        "input_png": model_input_png(),
        **verdict,
    }


def answered_with(*predictions: dict[str, Any]) -> Callable[[Route], None]:
    """A route handler answering POST /predict or GET /predictions with these predictions."""
    body = json.dumps({"predictions": list(predictions)})
    return lambda route: route.fulfill(status=200, content_type="application/json", body=body)


def send_as(page: Page, kind: str) -> Callable[[], None]:
    """The action that sends a drawing (a seven on the pad) or a picture (seven.png)."""
    if kind == "drawing":
        draw(page, SEVEN)
        return lambda: page.click("#send")
    return lambda: page.set_input_files("#file", SAMPLES / "seven.png")


def test_the_page_stands_alone_and_never_inserts_api_text_as_html():
    """It must work offline inside a function: nothing fetched from elsewhere, no HTML sinks."""
    html = (ROOT / "function" / "recognizer" / "static" / "index.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", html)


@pytest.mark.parametrize(("strokes", "digit"), [(SEVEN, 7), (THREE, 3)], ids=["seven", "three"])
def test_a_drawn_digit_is_recognized_shown_and_added_to_history(page, page_url, strokes, digit):
    draw(page, strokes)
    prediction = submitted(page, lambda: page.click("#send"))
    assert prediction["digit"] == digit
    recorded = requests.get(f"{page_url}/predictions/{prediction['id']}", timeout=10).json()
    model = recorded["model"]
    answered_by = f"{model['name']} v{model['version']} · {model['label']}"

    expect(page.locator("#digit")).to_have_text(str(digit))
    expect(page.locator("#bars li")).to_have_count(10)
    expect(page.locator("#bars li.top .bar-digit")).to_have_text(str(digit))
    expect(page.locator("#model")).to_have_text(answered_by)
    expect(page.locator("#elapsed")).to_have_text(re.compile(r"^\d+ ms$"))
    expect(page.locator("#status")).to_contain_text(f"Recognized {digit} with")
    expect(page.locator("#upload-caption")).to_have_text("What you sent: your drawing")
    assert natural_size(page, "#seen") == [28, 28]

    newest = page.locator("#history li").first
    expect(newest).to_have_attribute("data-id", prediction["id"])
    expect(newest.locator(".h-digit")).to_have_text(str(digit))
    expect(newest).to_contain_text(answered_by)
    expect(newest.locator("img.thumb")).to_be_visible()


def posts_of(page: Page) -> list[tuple[float, bytes]]:
    """Every POST /predict the page sends from now on: when, and its body."""
    sent: list[tuple[float, bytes]] = []

    def note(request: Any) -> None:
        if request.method == "POST" and "/predict" in request.url:
            sent.append((time.monotonic(), request.post_data_buffer or b""))

    page.on("request", note)
    return sent


def wait_until_true(page: Page, check: Callable[[], bool], what: str, timeout: float = 15) -> None:
    """Let the page (and the route handlers) run until `check` holds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        page.wait_for_timeout(50)


def test_a_pause_after_drawing_recognizes_it_without_a_press(page):
    sent = posts_of(page)
    lifted: list[float] = []

    def draw_a_three() -> None:
        draw(page, THREE)  # two strokes: no request between them
        lifted.append(time.monotonic())

    prediction = submitted(page, draw_a_three)
    assert prediction["digit"] == 3
    page.wait_for_timeout(1000)
    assert len(sent) == 1, f"{len(sent)} requests for one drawing"
    assert sent[0][0] - lifted[0] >= 0.6, "sent before the pause after the last stroke"
    expect(page.locator("#send")).to_be_visible()  # still there for the keyboard

    page.click("#clear")
    draw(page, SEVEN)
    assert submitted(page, lambda: page.click("#send"))["digit"] == 7  # pressed before the pause
    page.wait_for_timeout(1000)
    assert len(sent) == 2, "the press and the pause both sent the drawing"


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_an_answer_to_an_unfinished_drawing_is_provisional_until_the_pad_is_left_alone(
    clocked_page, viewport
):
    """A person lifts the pen for a second mid-digit (issue 29): the pause's answer to the half
    drawn three is shown muted, "so far", never as recognized; the whole three's answer is
    shown in full once the pad has been left alone for 2 s. Time is Playwright's fake clock,
    so the machine's load cannot decide what is provisional."""
    page = clocked_page
    page.set_viewport_size(viewport)
    answer = page.locator("#answer")

    def after_the_pause() -> dict[str, Any]:
        return submitted(page, lambda: page.clock.run_for(700))

    draw(page, THREE[:1])  # the top half of a three, then the pen is lifted
    after_the_pause()
    expect(answer).to_have_class(re.compile(r"\bprovisional\b"))
    expect(page.locator("#headline")).to_have_text(re.compile(r"^So far it looks like \d"))
    expect(page.locator("#status")).not_to_contain_text("Recognized")
    if viewport is PHONE:
        expect(page.locator("#peek-text")).to_have_text(re.compile(r"^So far: \d"))
    page.clock.run_for(300)  # a second after the lift, the pen comes down again

    draw(page, THREE[1:])
    assert after_the_pause()["digit"] == 3
    expect(answer).to_have_class(re.compile(r"\bprovisional\b"))
    page.clock.run_for(1299)
    expect(answer).to_have_class(re.compile(r"\bprovisional\b"))
    page.clock.run_for(1)  # 2 s after the last stroke: settled
    expect(answer).not_to_have_class(re.compile(r"\bprovisional\b"))
    expect(page.locator("#headline")).to_have_text(re.compile(r"^Recognized 3 with"))
    expect(page.locator("#status")).to_contain_text("Recognized 3 with")
    if viewport is PHONE:
        expect(page.locator("#peek-text")).to_have_text(re.compile(r"^Recognized 3 with"))


def test_a_pressed_send_is_never_provisional(clocked_page):
    page = clocked_page
    draw(page, THREE)
    submitted(page, lambda: page.click("#send"))
    expect(page.locator("#answer")).not_to_have_class(re.compile(r"\bprovisional\b"))
    expect(page.locator("#status")).to_contain_text("Recognized 3 with")


def test_the_drawing_is_sent_at_once_even_if_the_browser_defers_to_blob(page):
    """Chromium may put canvas.toBlob off for seconds (issue 29): the page encodes the drawing
    itself, so a toBlob that never calls back does not hold it up. What is sent is a 280x280
    grey PNG of exactly the pad's drawing."""
    page.evaluate("HTMLCanvasElement.prototype.toBlob = function () {}")
    bodies = sent_bodies(page)
    draw(page, SEVEN)
    assert submitted(page, lambda: page.click("#send"))["digit"] == 7
    sent = Image.open(io.BytesIO(bodies[0]))
    assert (sent.format, sent.mode, sent.size) == ("PNG", "L", (280, 280))
    drawn = page.evaluate(
        """() => {
            const picture = document.createElement("canvas");
            picture.width = picture.height = 280;
            paintDrawing(picture);
            return Array.from(picture.getContext("2d").getImageData(0, 0, 280, 280).data
                .filter((_, i) => i % 4 === 0));
        }"""
    )
    assert sent.tobytes() == bytes(drawn)
    assert min(drawn) == 0 and max(drawn) == 255


def test_a_newer_drawing_supersedes_the_one_in_flight(page):
    held: list[Route] = []
    page.route(PREDICT, lambda route: held.append(route))  # each waits until let through
    draw(page, [[(0.5, 0.2), (0.5, 0.8)]])  # a one
    wait_until_true(page, lambda: len(held) == 1, "the pause sends the drawing")

    page.click("#clear")
    draw(page, SEVEN)  # the newer drawing, while the one is in flight
    page.wait_for_timeout(1500)
    assert len(held) == 1, "a second request while one is in flight"

    first = held[0].request.post_data_buffer
    held[0].continue_()  # the real API answers the one: superseded, so not shown
    wait_until_true(
        page, lambda: len(held) == 2, "the newer drawing goes once the first is answered"
    )
    assert held[1].request.post_data_buffer != first
    expect(page.locator("#answer")).to_be_hidden()
    held[1].continue_()
    expect(page.locator("#answer")).to_be_visible()
    expect(page.locator("#digit")).to_have_text("7")
    page.wait_for_timeout(1000)
    assert len(held) == 2


def test_undo_removes_the_last_stroke_and_clear_empties_the_pad(page):
    draw(page, SEVEN[:1])
    one_stroke = ink(page)
    draw(page, [[(0.2, 0.5), (0.8, 0.5)]])
    assert ink(page) > one_stroke > 0
    page.click("#undo")
    assert ink(page) == one_stroke
    page.click("#clear")
    assert ink(page) == 0

    posted: list[str] = []
    page.on("request", lambda sent: posted.append(sent.url) if sent.method == "POST" else None)
    failed(page, lambda: page.click("#send"))
    expect(page.locator("#error-title")).to_have_text("Nothing to recognize yet")
    assert posted == []


@pytest.mark.parametrize("sample", SAMPLE_FILES, ids=[s.name for s in SAMPLE_FILES])
def test_an_uploaded_photo_or_scan_is_recognized_next_to_what_the_model_saw(page, sample):
    prediction = submitted(page, lambda: page.set_input_files("#file", sample))
    assert prediction["digit"] == digit_of(sample)
    expect(page.locator("#digit")).to_have_text(str(digit_of(sample)))
    expect(page.locator("#upload-caption")).to_contain_text(sample.name)
    assert natural_size(page, "#upload") == list(ImageOps.exif_transpose(Image.open(sample)).size)
    assert natural_size(page, "#seen") == [28, 28]
    expect(page.locator("#history li").first).to_have_attribute("data-id", prediction["id"])


def sent_bodies(page: Page) -> list[bytes]:
    """The bodies of POST /predict from now on, each passed on to the real API."""
    bodies: list[bytes] = []

    def capture(route: Route) -> None:
        bodies.append(route.request.post_data_buffer or b"")
        route.continue_()

    page.route(PREDICT, capture)
    return bodies


def test_a_large_photo_is_scaled_down_in_the_browser_before_upload(page, tmp_path):
    """A 3675x3085 JPEG stored turned a quarter (EXIF orientation 6) goes upright, 2048 px long."""
    upright = ImageOps.exif_transpose(Image.open(SAMPLES / "two-sideways.jpg"))
    stored = upright.rotate(90, expand=True)
    stored = stored.resize((stored.width * 5, stored.height * 5), Image.Resampling.LANCZOS)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    photo = tmp_path / "two-big.jpg"
    stored.save(photo, format="JPEG", quality=90, exif=exif)
    width, height = ImageOps.exif_transpose(Image.open(photo)).size
    assert (width, height) == (3085, 3675)

    bodies = sent_bodies(page)
    prediction = submitted(page, lambda: page.set_input_files("#file", photo))
    sent = Image.open(io.BytesIO(bodies[0]))
    assert sent.format == "JPEG"
    assert sent.size == (round(width * 2048 / height), 2048)
    assert len(bodies[0]) < photo.stat().st_size
    assert prediction["digit"] == 2  # read upright
    expect(page.locator("#upload-caption")).to_contain_text(
        "two-big.jpg, scaled from 3085\u00d73675 to 1719\u00d72048"
    )


@pytest.mark.parametrize("name", ["seven.png", "three-photo.jpg"])
def test_a_picture_within_2048_px_is_sent_as_it_is(page, name):
    bodies = sent_bodies(page)
    submitted(page, lambda: page.set_input_files("#file", SAMPLES / name))
    assert bodies == [(SAMPLES / name).read_bytes()]


def test_a_file_dropped_on_the_drop_zone_is_recognized(page):
    content = base64.b64encode((SAMPLES / "seven.png").read_bytes()).decode()
    transfer = page.evaluate_handle(
        """(content) => {
            const bytes = Uint8Array.from(atob(content), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
            return transfer;
        }""",
        content,
    )
    page.dispatch_event("#drop", "dragover", {"dataTransfer": transfer})
    expect(page.locator("#drop")).to_have_class(re.compile(r"\bover\b"))
    prediction = submitted(
        page, lambda: page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    )
    assert prediction["digit"] == 7
    expect(page.locator("#upload-caption")).to_contain_text("dropped.png")
    expect(page.locator("#drop")).not_to_have_class(re.compile(r"\bover\b"))


def blank_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 255).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("upload", "title", "code"),
    [
        (
            file_payload("notes.png", "image/png", b"just some text, renamed .png"),
            "That file is not a picture we can read",
            "not_an_image",
        ),
        (
            file_payload("notes.txt", "text/plain", b"just some text"),
            "That kind of file is not supported",
            "unsupported_media_type",
        ),
        (
            file_payload("blank.png", "image/png", blank_png()),
            "The picture looks blank",
            "blank_image",
        ),
        (
            file_payload("huge.png", "image/png", b"\x89PNG" + bytes(11 * 1024 * 1024)),
            "That file is too large",
            "request_too_large",
        ),
    ],
    ids=["not-an-image", "unsupported-type", "blank", "too-large"],
)
def test_errors_from_the_real_api_are_explained(page, upload, title, code):
    failed(page, lambda: page.set_input_files("#file", files=[upload]))
    expect(page.locator("#error-title")).to_have_text(title)
    expect(page.locator("#error-code")).to_have_text(code)
    expect(page.locator("#error-message")).not_to_be_empty()
    expect(page.locator("#answer")).to_be_hidden()
    expect(page.locator("#retry")).to_be_hidden()  # the same file would fail the same way
    in_plain_words(page)


def test_a_file_too_large_is_measured_in_megabytes(page):
    huge = file_payload("huge.png", "image/png", b"\x89PNG" + bytes(11 * 1024 * 1024))
    failed(page, lambda: page.set_input_files("#file", files=[huge]))
    expect(page.locator("#error-message")).to_contain_text(
        "That file is 11 MB; the service takes up to 10 MB."
    )
    expect(page.locator("#error-detail")).to_contain_text("10,485,760")  # the service's own words


def in_plain_words(page: Page) -> None:
    """The main message has no machine codes, exception names, status codes or byte counts."""
    shown = f"{page.inner_text('#error-title')} {page.inner_text('#error-message')}"
    raw = re.search(r"\b[a-z]+_[a-z_]+\b|[a-z]Error\b|\bHTTP\b|\b\d{1,3}(,\d{3})+\b", shown)
    assert raw is None, f"raw text in the error shown: {raw.group(0)!r} in {shown!r}"


@pytest.mark.parametrize(
    ("answer", "title", "detail", "retry"),
    [
        (
            lambda route: api_error(
                route,
                503,
                "model_unavailable",
                "the model server is unreachable (ConnectionError)",
                **{"Retry-After": "5"},
            ),
            "The recognizer is not available right now",
            "Try again in 5 s",
            True,
        ),
        (
            lambda route: api_error(route, 504, "model_timeout", "no answer within 5 s"),
            "The model took too long to answer",
            "no answer within 5 s",
            True,
        ),
        (
            lambda route: api_error(route, 413, "image_too_large", "40,000,001 pixels"),
            "That picture has too many pixels",
            "40,000,001 pixels",
            False,
        ),
        (
            lambda route: route.abort("connectionrefused"),
            "The service stopped answering",
            "it may have stopped",
            True,
        ),
        (
            lambda route: route.fulfill(status=502, content_type="text/html", body="<h1>Bad</h1>"),
            "Something went wrong",
            "HTTP 502",
            True,
        ),
    ],
    ids=["503", "504", "413-pixels", "network", "502-not-json"],
)
def test_every_failure_the_network_can_bring_is_shown(page, answer, title, detail, retry):
    """Failures the local stack cannot be made to produce on demand, answered by the browser."""
    page.route(PREDICT, answer)
    failed(page, lambda: page.set_input_files("#file", SAMPLES / "seven.png"))
    expect(page.locator("#error-title")).to_have_text(title)
    expect(page.locator("#error")).to_contain_text(detail)
    expect(page.locator("#error-message")).not_to_contain_text("connection")
    expect(page.locator("#retry")).to_be_visible(visible=retry)  # a 5xx or no answer at all
    in_plain_words(page)


def test_retry_waits_as_long_as_retry_after_says_and_counts_down(page):
    """Pressed early, Retry waits out Retry-After, then sends the same picture with the same key."""
    asked: list[tuple[float, str | None]] = []

    def unavailable_once(route: Route) -> None:
        asked.append((time.monotonic(), route.request.headers.get("idempotency-key")))
        if len(asked) > 1:
            route.continue_()  # the real API
            return
        api_error(route, 503, "model_unavailable", "starting", **{"Retry-After": "3"})

    page.route(PREDICT, unavailable_once)
    failed(page, lambda: page.set_input_files("#file", SAMPLES / "seven.png"))
    retry = page.locator("#retry")
    expect(retry).to_have_text(re.compile(r"^Try again in [23] s$"))
    retry.click()
    expect(retry).to_have_text(re.compile(r"^Trying again in [12] s…$"))
    expect(retry).to_have_text("Trying again in 1 s…")
    expect(page.locator("#answer")).to_have_attribute("data-id", UUID)
    expect(page.locator("#digit")).to_have_text("7")
    expect(page.locator("#error")).to_be_hidden()
    (failed_at, first_key), (retried_at, second_key) = asked
    assert retried_at - failed_at >= 2.95, f"retried after {retried_at - failed_at:.2f} s"
    assert first_key and first_key == second_key


def test_text_from_the_api_is_shown_as_text_never_run_as_html(page):
    markup = '<img src=x onerror="window.injected = true">'
    page.route(PREDICT, lambda route: api_error(route, 400, "not_an_image", markup))
    failed(page, lambda: page.set_input_files("#file", SAMPLES / "seven.png"))
    expect(page.locator("#error-detail")).to_contain_text(markup)
    expect(page.locator("#error img")).to_have_count(0)
    assert page.evaluate("window.injected") is None


@pytest.mark.parametrize("verdict", [{"verdict": "digit", "candidates": [7], "reasons": []}, {}])
def test_a_digit_the_service_stands_by_is_shown_as_recognized(page, verdict):
    """Also the answer of a server from before verdicts ({}), and after a doubtful answer."""
    page.route(PREDICT, answered_with(faked_prediction(7, 0.98, verdict="not_a_digit")))
    submitted(page, send_as(page, "picture"))
    expect(page.locator("#answer")).to_have_class(re.compile(r"\bdoubt\b"))
    page.unroute(PREDICT)

    page.route(PREDICT, answered_with(faked_prediction(7, 0.98, **verdict)))
    submitted(page, send_as(page, "drawing"))
    expect(page.locator("#answer")).to_have_attribute("data-verdict", "digit")
    expect(page.locator("#answer")).not_to_have_class(re.compile(r"\bdoubt\b"))
    expect(page.locator("#headline")).to_have_text("Recognized 7 with 98% confidence")
    for gone in ("#reasons", "#hint", "#guess-label"):
        expect(page.locator(gone)).to_be_hidden()
    expect(page.locator("#confidence-label")).to_have_text("Confidence")
    expect(page.locator("#digit")).to_have_text("7")
    expect(page.locator("#status")).to_have_text(
        re.compile(r"^Recognized 7 with 98% confidence, model mnist-cnn v3 · stable, in \d+ ms\.$")
    )


@pytest.mark.parametrize(
    ("kind", "verdict", "headline", "reasons"),
    [
        (
            "drawing",
            {"verdict": "unsure", "candidates": [6, 0], "reasons": ["ambiguous"]},
            "Not sure: 6 or 0?",
            ["it could be read as more than one digit"],
        ),
        (
            "picture",
            {"verdict": "unsure", "candidates": [6, 0, 8], "reasons": ["ambiguous"]},
            "Not sure: 6, 0 or 8?",
            ["it could be read as more than one digit"],
        ),
        (
            "drawing",
            {
                "verdict": "not_a_digit",
                "candidates": [6],
                "reasons": ["several_marks", "touches_edge"],
            },
            "That does not look like a single digit",
            ["it looks like more than one mark or digit", "it runs off the edge of the pad"],
        ),
        (
            "picture",
            {"verdict": "not_a_digit", "candidates": [6], "reasons": ["touches_edge"]},
            "That does not look like a single digit",
            ["it runs off the edge of the picture"],
        ),
        (
            "drawing",
            {"verdict": "not_a_digit", "candidates": [], "reasons": ["too_little_ink"]},
            "That does not look like a single digit",
            ["there is almost no ink"],
        ),
        (
            "picture",
            {
                "verdict": "not_a_digit",
                "candidates": [],
                "reasons": ["unusual_shape", "low_confidence"],
            },
            "That does not look like a single digit",
            ["its shape is unlike any digit", "the model is not confident of any digit"],
        ),
    ],
    ids=[
        "unsure-two",
        "unsure-three",
        "marks-and-edge-of-pad",
        "edge-of-picture",
        "too-little-ink",
        "shape-and-confidence",
    ],
)
def test_doubt_is_shown_with_its_reasons_in_plain_words(page, kind, verdict, headline, reasons):
    page.route(PREDICT, answered_with(faked_prediction(6, 0.54, **verdict)))
    submitted(page, send_as(page, kind))
    answer = page.locator("#answer")
    expect(answer).to_have_attribute("data-verdict", verdict["verdict"])
    expect(answer).to_have_class(re.compile(r"\bdoubt\b"))
    expect(page.locator("#headline")).to_have_text(headline)
    expect(page.locator("#reasons li")).to_have_text([r[0].upper() + r[1:] for r in reasons])
    expect(page.locator("#hint")).to_contain_text("one digit, larger")
    if kind == "drawing":
        expect(page.locator("#hint")).to_contain_text("inside the pad")

    # The model's answer stays in view, as its guess.
    expect(page.locator("#digit")).to_have_text("6")
    expect(page.locator("#guess-label")).to_have_text("the model's guess")
    expect(page.locator("#confidence-label")).to_have_text("Model's confidence")
    expect(page.locator("#confidence")).to_have_text("54%")
    expect(page.locator("#bars li")).to_have_count(10)
    expect(page.locator("#bars li.top .bar-digit")).to_have_text("6")
    candidates = sorted(str(n) for n in verdict["candidates"])
    expect(page.locator("#bars li.candidate .bar-digit")).to_have_text(candidates)

    status = page.locator("#status")
    expect(status).to_contain_text(headline)
    for reason in reasons:
        expect(status).to_contain_text(reason, ignore_case=True)
    expect(status).to_contain_text("The model's guess: 6 (54%)")
    expect(status).not_to_contain_text("Recognized")


MARKUP = '<img src=x onerror="window.injected = true">'


@pytest.mark.parametrize(
    ("verdict", "headline", "reasons"),
    [
        (
            {"verdict": "unsure", "candidates": [6, 0], "reasons": ["ambiguous", "blurry"]},
            "Not sure: 6 or 0?",
            ["It could be read as more than one digit", "Something about it is unusual"],
        ),
        (
            {"verdict": "looks_like_a_letter", "candidates": [4], "reasons": ["letter_o"]},
            "The service has doubts about this answer",
            ["Something about it is unusual"],
        ),
        (
            {"verdict": "unsure", "candidates": "6 or 0", "reasons": None},
            "Not sure which digit this is",
            [],
        ),
        (
            {"verdict": "not_a_digit", "reasons": ["constructor", "__proto__", "toString"]},
            "That does not look like a single digit",
            ["Something about it is unusual"],
        ),
        (
            {"verdict": MARKUP, "candidates": [MARKUP], "reasons": [MARKUP]},
            "The service has doubts about this answer",
            ["Something about it is unusual"],
        ),
    ],
    ids=["unknown-reason", "unknown-verdict", "malformed-lists", "prototype-names", "markup"],
)
def test_verdicts_and_reasons_this_page_does_not_know_get_generic_words(
    page, verdict, headline, reasons
):
    """A newer server's codes: shown sensibly, never crash (the `page` fixture fails on errors)."""
    page.route(PREDICT, answered_with(faked_prediction(4, 0.41, **verdict)))
    submitted(page, send_as(page, "picture"))
    expect(page.locator("#headline")).to_have_text(headline)
    expect(page.locator("#reasons li")).to_have_text(reasons)
    expect(page.locator("#hint")).to_be_visible()
    expect(page.locator("#digit")).to_have_text("4")
    expect(page.locator("#guess-label")).to_be_visible()
    expect(page.locator("#status")).to_contain_text(headline)
    expect(page.locator("#verdict img")).to_have_count(0)
    assert page.evaluate("window.injected") is None


def test_the_history_marks_unsure_and_not_a_digit_entries(page):
    entries = [
        faked_prediction(7, 0.98, verdict="digit", candidates=[7], reasons=[]),
        faked_prediction(6, 0.54, verdict="unsure", candidates=[6, 0], reasons=["ambiguous"]),
        faked_prediction(1, 0.31, verdict="not_a_digit", candidates=[], reasons=["several_marks"]),
        faked_prediction(4, 0.41, verdict="from_a_newer_server", reasons=["new_code"]),
    ]
    page.route(HISTORY, answered_with(*entries))
    show_everyones(page)
    items = page.locator("#history li")
    expect(items).to_have_count(4)
    for item, entry in zip(items.all(), entries, strict=True):
        expect(item).to_have_attribute("data-id", entry["id"])
    expect(items.locator(".h-digit")).to_have_text(["7", "6", "1", "4"])
    expect(items.nth(0)).not_to_have_class(re.compile(r"\bdoubt\b"))
    expect(items.nth(0)).to_contain_text("98% confident")
    expect(items.nth(0).locator(".h-verdict")).to_have_count(0)
    expect(page.locator("#history li.doubt")).to_have_count(3)
    expect(page.locator("#history li.doubt .h-verdict")).to_have_text(
        ["Not sure: 6 or 0?", "Not a single digit", "Doubtful"]
    )
    expect(items.nth(1)).to_contain_text("model's guess, 54%")
    expect(items.nth(1)).not_to_contain_text("confident")


def test_a_dot_on_the_pad_is_not_recognized_as_a_digit(page):
    """Through the real API: a speck of ink gets a verdict of doubt, on the card and in history."""
    draw(page, DOT)
    prediction = submitted(page, lambda: page.click("#send"))
    answer = page.locator("#answer")
    expect(answer).to_have_class(re.compile(r"\bdoubt\b"))
    expect(answer).not_to_have_attribute("data-verdict", "digit")
    expect(page.locator("#headline")).not_to_have_text(re.compile(r"^Recognized"))
    expect(page.locator("#reasons")).to_contain_text("There is almost no ink")
    expect(page.locator("#status")).not_to_contain_text("Recognized")
    newest = page.locator("#history li").first
    expect(newest).to_have_attribute("data-id", prediction["id"])
    expect(newest).to_have_class(re.compile(r"\bdoubt\b"))


def test_a_digit_running_off_the_edge_of_the_pad_is_flagged(page):
    """Through the real API: the edge reason, worded for the pad."""
    draw(page, SEVEN_AT_THE_EDGE)
    submitted(page, lambda: page.click("#send"))
    expect(page.locator("#answer")).not_to_have_attribute("data-verdict", "digit")
    expect(page.locator("#reasons")).to_contain_text("It runs off the edge of the pad")
    expect(page.locator("#status")).to_contain_text("runs off the edge of the pad")


def record(url: str, prediction_id: str) -> dict[str, Any]:
    answer = requests.get(f"{url}/predictions/{prediction_id}", timeout=10)
    answer.raise_for_status()
    return answer.json()


def token_of(prediction_id: str) -> str:
    return feedback.token_for(FEEDBACK_SECRET.encode(), uuid.UUID(prediction_id))


def is_correction(sent: Any) -> bool:
    return sent.method == "PUT" and FEEDBACK.search(sent.url) is not None


def test_a_wrong_answer_is_corrected_with_the_predictions_own_token(page, page_url):
    draw(page, SEVEN)
    prediction = submitted(page, lambda: page.click("#send"))
    group = page.locator("#answer .correct")
    expect(group).to_contain_text("Wrong? It's a")
    expect(group.locator(".correct-choices button")).to_have_text([*"0123456789", "not a digit"])
    expect(group.locator("[aria-pressed=true]")).to_have_count(0)

    with page.expect_request(is_correction) as put:
        group.locator("button[data-digit='3']").click()
    expect(group.locator(".correct-status")).to_have_text("Thanks: recorded as 3")
    expect(group.locator("[aria-pressed=true]")).to_have_text(["3"])
    assert put.value.url.endswith(f"/predictions/{prediction['id']}/feedback")
    assert json.loads(put.value.post_data) == {"digit": 3, "token": token_of(prediction["id"])}
    assert record(page_url, prediction["id"])["feedback"]["digit"] == 3
    kept = page.evaluate(f"JSON.parse(localStorage.getItem('{KEPT}'))")
    assert kept[prediction["id"]]["token"] == token_of(prediction["id"])

    group.locator("button[data-digit=none]").click()  # the last correction wins
    expect(group.locator(".correct-status")).to_have_text("Thanks: recorded as not a digit")
    expect(group.locator("[aria-pressed=true]")).to_have_text(["not a digit"])
    corrected = record(page_url, prediction["id"])["feedback"]
    assert corrected is not None and corrected["digit"] is None


@pytest.mark.parametrize(
    ("answer", "words", "retry"),
    [
        (
            lambda route: api_error(
                route, 503, "store_unavailable", "OperationalError", **{"Retry-After": "5"}
            ),
            "Not saved. Predictions cannot be recorded right now.",
            True,
        ),
        (
            lambda route: api_error(route, 403, "forbidden", "the token is not the one"),
            "Not saved. This browser may not correct that prediction.",
            False,
        ),
        (
            lambda route: api_error(route, 404, "unknown_prediction", "no prediction has id"),
            "Not saved. That prediction is no longer kept.",
            False,
        ),
        (
            lambda route: api_error(route, 400, "invalid_feedback", '"digit" must be'),
            "Not saved. The service did not accept the correction.",
            False,
        ),
        (
            lambda route: route.abort("connectionrefused"),
            "Not saved. The service stopped answering.",
            True,
        ),
        (
            lambda route: route.fulfill(status=200, content_type="text/html", body="<p>ok</p>"),
            "Not saved. The answer could not be read.",
            False,
        ),
    ],
    ids=["503", "403", "404", "400", "network", "200-not-json"],
)
def test_a_correction_that_fails_says_so_and_nothing_claims_it_was_saved(
    page, page_url, answer, words, retry
):
    draw(page, SEVEN)
    prediction = submitted(page, lambda: page.click("#send"))
    group = page.locator("#answer .correct")
    group.locator("button[data-digit='1']").click()  # really recorded
    expect(group.locator(".correct-status")).to_have_text("Thanks: recorded as 1")

    page.route(FEEDBACK, answer)
    group.locator("button[data-digit='4']").click()
    status = group.locator(".correct-status")
    expect(status).to_contain_text(words)
    expect(status).to_contain_text("It stays recorded as 1.")
    expect(status).not_to_contain_text("Thanks")
    expect(group.locator("[aria-pressed=true]")).to_have_text(["1"])
    expect(group.locator(".retry")).to_be_visible(visible=retry)
    assert record(page_url, prediction["id"])["feedback"]["digit"] == 1
    shown = status.inner_text()
    assert not re.search(r"_|Error|\b\d{3}\b", shown), shown


def test_a_correction_refused_for_a_while_is_saved_by_retry(page, page_url):
    draw(page, SEVEN)
    prediction = submitted(page, lambda: page.click("#send"))
    refused: list[bool] = []

    def unavailable_once(route: Route) -> None:
        if refused:
            route.continue_()
            return
        refused.append(True)
        api_error(route, 503, "store_unavailable", "log down", **{"Retry-After": "1"})

    page.route(FEEDBACK, unavailable_once)
    group = page.locator("#answer .correct")
    group.locator("button[data-digit='9']").click()
    expect(group.locator(".correct-status")).to_contain_text("Not saved.")
    group.locator(".retry").click()
    expect(group.locator(".correct-status")).to_have_text("Thanks: recorded as 9")
    assert record(page_url, prediction["id"])["feedback"]["digit"] == 9


def test_history_falls_back_when_the_upload_was_not_stored(page, page_url):
    seven = (SAMPLES / "seven.png").read_bytes()
    posted = requests.post(
        f"{page_url}/predict", data=seven, headers={"Content-Type": "image/png"}, timeout=30
    )
    posted.raise_for_status()
    record_id = posted.json()["predictions"][0]["id"]
    page.route(
        "**/predictions/*/image",
        lambda route: api_error(route, 404, "upload_not_stored", "over the storage cap"),
    )
    show_everyones(page)
    newest = page.locator("#history li").first
    expect(newest).to_have_attribute("data-id", record_id)
    expect(newest.locator(".thumb.missing")).to_have_text("upload not kept")


@pytest.mark.parametrize(
    ("everyones", "path", "words"),
    [
        (True, HISTORY, "Recent predictions are not available"),
        (False, ONE_RECORD, "Some of this browser's predictions could not be read"),
    ],
    ids=["everyones", "this-browsers"],
)
def test_history_that_cannot_be_read_says_so(page, everyones, path, words):
    submitted(page, send_as(page, "picture"))  # this browser has a prediction to read back
    if everyones:
        show_everyones(page)
    page.route(
        path,
        lambda route: api_error(
            route, 503, "store_unavailable", "log down", **{"Retry-After": "5"}
        ),
    )
    page.click("#refresh")
    expect(page.locator("#history-status")).to_contain_text(words)
    expect(page.locator("#history-status")).to_contain_text("Try again in 5 s")


def show_everyones(page: Page) -> None:
    """Switch the history from this browser's predictions to everyone's, as a person would."""
    page.click("label[for=scope-all]")
    expect(page.locator("#scope-all")).to_be_checked()
    expect(page.locator("#history")).to_have_attribute("aria-busy", "false")


def listed_ids(page: Page) -> list[str]:
    expect(page.locator("#history")).to_have_attribute("aria-busy", "false")
    return page.locator("#history li").evaluate_all("items => items.map((i) => i.dataset.id)")


def test_the_history_is_this_browsers_with_a_switch_to_everyones(page, page_url):
    seven = (SAMPLES / "seven.png").read_bytes()
    headers = {"Content-Type": "image/png"}
    posted = requests.post(f"{page_url}/predict", data=seven, headers=headers, timeout=30)
    elsewhere = posted.json()["predictions"][0]["id"]  # another client's
    mine = submitted(page, lambda: page.set_input_files("#file", SAMPLES / "five-marker.png"))

    kept = page.evaluate(
        f"""() => {{
            const kept = JSON.parse(localStorage.getItem("{KEPT}"));
            return Object.keys(kept).sort((a, b) => kept[b].at - kept[a].at);
        }}"""
    )
    assert listed_ids(page) == kept[:12]
    assert listed_ids(page)[0] == mine["id"] and elsewhere not in listed_ids(page)

    show_everyones(page)
    expect(page.locator("#history li").first).to_have_attribute("data-id", mine["id"])
    expect(page.locator("#history li").nth(1)).to_have_attribute("data-id", elsewhere)
    expect(page.locator(f"#history li[data-id='{elsewhere}'] .h-digit")).to_have_text("7")

    page.click("label[for=scope-mine]")
    expect(page.locator(f"#history li[data-id='{elsewhere}']")).to_have_count(0)
    expect(page.locator("#history li").first).to_have_attribute("data-id", mine["id"])


def test_a_history_entry_opens_its_detail_where_it_can_be_corrected(page, page_url):
    draw(page, SEVEN)
    prediction = submitted(page, lambda: page.click("#send"))
    page.reload()  # the result card is gone; the history still has it, and its token
    expect(page.locator("#answer")).to_be_hidden()
    entry = page.locator(f"#history li[data-id='{prediction['id']}']")
    with page.expect_response(lambda r: r.url.endswith(f"/predictions/{prediction['id']}")):
        entry.locator("button").click()

    detail = page.locator("#detail")
    expect(detail).to_be_visible()
    recorded = record(page_url, prediction["id"])
    expect(page.locator("#detail-seen")).to_have_attribute(
        "src", f"data:image/png;base64,{recorded['input_png']}"
    )
    assert natural_size(page, "#detail-seen") == [28, 28]
    expect(page.locator("#detail-headline")).to_have_text(re.compile(r"^Recognized 7 with"))
    expect(page.locator("#detail-bars li")).to_have_count(10)
    expect(page.locator("#detail-bars li.top .bar-digit")).to_have_text("7")
    top = page.locator("#detail-bars li.top .bar-value")
    expect(top).to_have_text(
        re.compile(rf"^{round(100 * max(recorded['probabilities']))}(\.\d)?%$")
    )
    expect(page.locator("#detail-feedback")).to_have_text("Not corrected")
    expect(page.locator("#detail-upload")).to_be_visible()

    detail.locator(".correct button[data-digit='2']").click()
    expect(detail.locator(".correct-status")).to_have_text("Thanks: recorded as 2")
    expect(page.locator("#detail-feedback")).to_have_text(re.compile(r"^Recorded as 2"))
    assert record(page_url, prediction["id"])["feedback"]["digit"] == 2
    page.keyboard.press("Escape")
    expect(detail).to_be_hidden()
    expect(entry.locator("button")).to_be_focused()
    expect(entry.locator(".h-feedback")).to_have_text("corrected: 2")

    page.reload()  # read back from the service
    page.locator(f"#history li[data-id='{prediction['id']}'] button").click()
    expect(page.locator("#detail-feedback")).to_have_text(re.compile(r"^Recorded as 2"))
    expect(detail.locator(".correct [aria-pressed=true]")).to_have_text(["2"])
    page.click("#detail-close")
    expect(detail).to_be_hidden()


def test_with_api_token_set_the_page_asks_for_it_and_then_works(protected_page):
    page = protected_page
    expect(page.locator("#history-status")).to_contain_text("Nothing from this browser yet")
    failed(page, lambda: page.set_input_files("#file", SAMPLES / "seven.png"))
    expect(page.locator("#error-title")).to_have_text("This needs the API token")
    expect(page.locator("#error-code")).to_have_text("unauthorized")
    expect(page.locator("#token-form")).to_be_visible()
    show_everyones(page)
    expect(page.locator("#history-status")).to_have_text("The history needs the API token.")

    page.fill("#token", "not-the-token")
    page.click("#token-form button")
    expect(page.locator("#history-status")).to_contain_text("not accepted")

    page.fill("#token", API_TOKEN)
    page.click("#token-form button")
    expect(page.locator("#token-form")).to_be_hidden()
    prediction = submitted(page, lambda: page.set_input_files("#file", SAMPLES / "seven.png"))
    assert prediction["digit"] == 7
    newest = page.locator("#history li").first
    expect(newest).to_have_attribute("data-id", prediction["id"])
    expect(newest.locator("img.thumb")).to_be_visible()

    page.reload()  # kept for the tab's session, not typed again; this browser's history again
    expect(page.locator("#scope-mine")).to_be_checked()
    expect(page.locator("#history li").first).to_have_attribute("data-id", prediction["id"])
    expect(page.locator("#token-form")).to_be_hidden()
    stored = page.evaluate("Object.values(sessionStorage)")
    assert stored == [API_TOKEN]
    assert API_TOKEN not in json.dumps(page.evaluate("Object.entries(localStorage)"))
    kept = page.evaluate(f"JSON.parse(localStorage.getItem('{KEPT}'))")  # no FEEDBACK_SECRET here:
    assert list(kept) == [prediction["id"]] and kept[prediction["id"]]["token"] is None  # no token


def test_api_paths_resolve_below_the_path_the_function_is_mounted_at(page, page_url):
    """Deployed, the function may live at …/recognize: the page must not call the host's root."""
    mount = "/mounted/recognize"

    def through_mount(route: Route) -> None:
        route.fulfill(response=route.fetch(url=route.request.url.replace(mount, "", 1)))

    page.route(re.compile(rf"^{re.escape(page_url)}/predict"), lambda r: r.abort())
    page.route(re.compile(rf"^{re.escape(page_url + mount)}"), through_mount)
    page.goto(page_url + mount)
    prediction = submitted(page, lambda: page.set_input_files("#file", SAMPLES / "seven.png"))
    assert prediction["digit"] == 7
    expect(page.locator("#history li").first).to_have_attribute("data-id", prediction["id"])
    expect(page.locator("#history li").first.locator("img.thumb")).to_be_visible()


def no_horizontal_scroll(page: Page) -> None:
    scroll, width = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert scroll <= width, f"the page scrolls sideways: {scroll} px wide in {width} px"


def test_the_phone_layout_fits_a_narrow_screen(page):
    page.set_viewport_size(PHONE)
    no_horizontal_scroll(page)
    submitted(page, lambda: page.set_input_files("#file", SAMPLES / "three-photo.jpg"))
    no_horizontal_scroll(page)
    expect(page.locator("#peek")).to_be_in_viewport()
    controls = ("#pad", "#undo", "#clear", "#send", "label[for=file]", "#bars", "#peek-details")
    for control in (*controls, "#answer .correct-choices"):
        box = page.locator(control).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    buttons = (
        "#undo",
        "#clear",
        "#send",
        "label[for=file]",
        "#peek-details",
        "label[for=scope-all]",
    )
    for button in (*buttons, "#answer .correct button >> nth=0"):
        assert page.locator(button).bounding_box()["height"] >= 44, f"{button}: small touch target"
        assert page.locator(button).bounding_box()["width"] >= 44, f"{button}: small touch target"
    failed(
        page, lambda: page.set_input_files("#file", files=[file_payload("x.txt", "text/x", b"x")])
    )
    no_horizontal_scroll(page)


def test_a_doubtful_answer_fits_a_narrow_screen(page):
    page.set_viewport_size(PHONE)
    reasons = ["several_marks", "touches_edge", "unusual_shape", "low_confidence", "ambiguous"]
    doubt = {"verdict": "unsure", "candidates": [6, 0, 8], "reasons": reasons}
    page.route(PREDICT, answered_with(faked_prediction(6, 0.4, **doubt)))
    submitted(page, send_as(page, "drawing"))
    expect(page.locator("#reasons li")).to_have_count(len(reasons))
    expect(page.locator("#peek")).to_have_class("doubt")
    expect(page.locator("#peek-text")).to_have_text("Not sure: 6, 0 or 8?")
    no_horizontal_scroll(page)
    page.click("#peek-details")  # the whole answer, on request
    expect(page.locator("#verdict")).to_be_in_viewport()
    expect(page.locator("#result")).to_be_focused()
    no_horizontal_scroll(page)


def test_on_a_phone_answers_come_without_scrolling_the_pad_away(page):
    page.set_viewport_size(PHONE)
    pad = page.locator("#pad")
    expect(pad).to_be_in_viewport(ratio=1)
    expect(page.locator("#peek")).to_be_in_viewport(ratio=1)  # its room is kept from the start
    peek_at = page.locator("#peek").bounding_box()

    assert submitted(page, lambda: draw(page, SEVEN))["digit"] == 7  # as you draw
    expect(page.locator("#peek-text")).to_have_text(re.compile(r"^Recognized 7 with"))
    expect(page.locator("#peek-digit")).to_have_text("7")
    assert page.evaluate("window.scrollY") == 0
    expect(pad).to_be_in_viewport(ratio=1)
    expect(page.locator("#peek")).to_be_in_viewport(ratio=1)
    assert page.locator("#peek").bounding_box()["y"] == peek_at["y"], (
        "the answer moved the controls"
    )

    page.click("#clear")
    submitted(page, lambda: page.set_input_files("#file", SAMPLES / "three-photo.jpg"))
    expect(page.locator("#peek-digit")).to_have_text("3")
    expect(pad).to_be_in_viewport(ratio=1)

    huge = file_payload("huge.png", "image/png", b"\x89PNG" + bytes(11 * 1024 * 1024))
    failed(page, lambda: page.set_input_files("#file", files=[huge]))
    expect(page.locator("#peek-text")).to_have_text("That file is too large")
    expect(page.locator("#peek")).to_have_class("failed")
    expect(pad).to_be_in_viewport(ratio=1)
    page.click("#peek-details")
    expect(page.locator("#error")).to_be_in_viewport()


def tab_to(page: Page, element_id: str, limit: int = 20) -> None:
    """Press Tab until the element has focus, as a keyboard user would."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == element_id:
            return
    raise AssertionError(f"#{element_id} is not reachable with Tab")


def test_every_control_is_reachable_and_works_from_the_keyboard(page):
    order = []
    for _ in range(8):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id"))
    assert order[:6] == ["pad", "undo", "clear", "send", "file", "refresh"], order
    outline = "(element) => getComputedStyle(element).outlineStyle"
    tab_to(page, "send")
    assert page.locator("#send").evaluate(outline) != "none", "no visible focus on buttons"
    tab_to(page, "file")
    assert page.locator("label[for=file]").evaluate(outline) != "none", "no focus on the picker"

    draw(page, SEVEN)
    page.locator("body").focus()
    tab_to(page, "send")
    assert submitted(page, lambda: page.keyboard.press("Enter"))["digit"] == 7
    expect(page.locator("#status")).to_contain_text("Recognized 7")
    page.keyboard.press("Shift+Tab")  # to Clear
    page.keyboard.press("Space")
    assert ink(page) == 0

    tab_to(page, "file")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    prediction = submitted(page, lambda: chooser.value.set_files(SAMPLES / "five-marker.png"))
    assert prediction["digit"] == 5


def test_the_pad_has_keyboard_shortcuts(page):
    draw(page, THREE[:1])
    one_stroke = ink(page)
    draw(page, THREE[1:])
    page.locator("#pad").focus()
    page.keyboard.press("Control+z")
    assert ink(page) == one_stroke
    draw(page, THREE[1:])
    page.locator("#pad").focus()
    assert submitted(page, lambda: page.keyboard.press("Enter"))["digit"] == 3
    page.keyboard.press("Delete")
    assert ink(page) == 0


def backing_store(page: Page) -> dict[str, float]:
    """The pad's canvas: its width and height attributes, and its content box in CSS px."""
    return page.locator("#pad").evaluate(
        """(pad) => {
            const box = pad.getBoundingClientRect();
            return { width: pad.width, height: pad.height,
                     css: box.width - pad.clientLeft * 2, dpr: devicePixelRatio };
        }"""
    )


def test_the_pad_is_sharp_on_a_high_density_screen_and_still_reads_digits(hidpi_page):
    page = hidpi_page
    store = backing_store(page)
    assert store["dpr"] == 2
    assert abs(store["width"] - 2 * store["css"]) <= 1, store
    assert store["height"] == store["width"]

    bodies = sent_bodies(page)
    draw(page, SEVEN)
    assert submitted(page, lambda: page.click("#send"))["digit"] == 7
    page.click("#clear")
    draw(page, THREE)
    assert submitted(page, lambda: page.click("#send"))["digit"] == 3
    # Sent at the pad's own size, the same on any screen.
    assert [Image.open(io.BytesIO(body)).size for body in bodies] == [(280, 280)] * 2

    inked = ink(page)
    page.set_viewport_size(PHONE)  # the pad shrinks: a new backing store, the drawing kept
    expect(page.locator("#pad")).not_to_have_attribute("width", str(store["width"]))
    resized = backing_store(page)
    assert abs(resized["width"] - 2 * resized["css"]) <= 1, resized
    assert ink(page) == pytest.approx(inked * (resized["width"] / store["width"]) ** 2, rel=0.1)


def contrast(one: str, other: str) -> float:
    """WCAG 2 contrast ratio of two computed colours, "rgb(r, g, b)"."""

    def luminance(colour: str) -> float:
        channels = [int(c) / 255 for c in re.findall(r"\d+", colour)[:3]]
        linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(one), luminance(other)), reverse=True)
    return (high + 0.05) / (low + 0.05)


# Run in the page: the colour behind an element (the first ancestor with an opaque background).
BEHIND = """(element) => {
    for (let node = element.parentElement; node; node = node.parentElement) {
        const colour = getComputedStyle(node).backgroundColor;
        const alpha = colour.startsWith("rgba") ? Number(colour.split(",")[3].replace(")", "")) : 1;
        if (alpha > 0) return colour;
    }
    return "rgb(255, 255, 255)";
}"""
NAME = "(e) => `${e.tagName} ${e.id || e.className} ${e.textContent.trim().slice(0, 24)}`"
# The element drawn for the focused one (a hidden file or radio input shows on its label).
FOCUS_SHOWN = """() => {
    const focused = document.activeElement;
    const labelled = focused.matches("input[type=file], input[type=radio]");
    return labelled ? document.querySelector(`label[for="${focused.id}"]`) : focused;
}"""


def focus_rings(page: Page) -> list[tuple[str, str, str, str]]:
    """Tab through the page: each stop's name, its outline style and colour, what is behind it."""
    rings: list[tuple[str, str, str, str]] = []
    page.evaluate("window.visitedStops = new Set()")
    for _ in range(100):  # round the page once, from wherever the focus is
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement === document.body"):
            continue  # past the last stop, before the first
        if page.evaluate("visitedStops.has(document.activeElement)"):
            break
        page.evaluate("visitedStops.add(document.activeElement)")
        shown = page.evaluate_handle(FOCUS_SHOWN)
        name = shown.evaluate(NAME)
        style = shown.evaluate(
            "(e) => [getComputedStyle(e).outlineStyle, getComputedStyle(e).outlineColor]"
        )
        rings.append((name, *style, shown.evaluate(BEHIND)))
    return rings


CONTROLS = "button, .button, .scope label, input:not([type=file]):not([type=radio]), #pad"


def control_borders(page: Page) -> dict[str, tuple[str, str]]:
    """Every visible control with a border: its border colour and the colour behind it."""
    return page.locator(CONTROLS).evaluate_all(
        f"""(controls) => controls
            .filter((c) => c.offsetParent !== null)
            .filter((c) => parseFloat(getComputedStyle(c).borderTopWidth) > 0)
            .map((c) => [({NAME})(c), getComputedStyle(c).borderTopColor, ({BEHIND})(c)])"""
    )


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_focus_rings_and_control_borders_contrast_three_to_one(page, scheme):
    page.emulate_media(color_scheme=scheme)
    draw(page, SEVEN)
    submitted(page, lambda: page.click("#send"))  # the correction buttons
    rings: list[str] = []
    borders: list[str] = []
    for viewport in (DESKTOP, PHONE):  # the phone's gist under the pad has its own background
        page.set_viewport_size(viewport)
        for name, style, colour, behind in focus_rings(page):
            assert style != "none", f"{name}: no focus ring"
            assert contrast(colour, behind) >= 3, f"{name}: focus ring {colour} on {behind}"
            rings.append(name)
        for name, colour, behind in control_borders(page):
            assert contrast(colour, behind) >= 3, f"{name}: border {colour} on {behind}"
            borders.append(name)
    for expected in ("CANVAS pad", "BUTTON undo", "LABEL", "not a digit", "peek-details"):
        assert any(expected in name for name in rings), f"{expected}: focus ring not checked"
        assert any(expected in name for name in borders), f"{expected}: border not checked"

    page.route(PREDICT, lambda route: api_error(route, 503, "model_unavailable", "down"))
    failed(page, lambda: page.set_input_files("#file", SAMPLES / "seven.png"))
    for name, colour, behind in control_borders(page):  # Try again, on the error's background
        assert contrast(colour, behind) >= 3, f"{name}: border {colour} on {behind}"
    retry = page.locator("#retry")
    retry.focus()
    colour = retry.evaluate("(e) => getComputedStyle(e).outlineColor")
    assert contrast(colour, retry.evaluate(BEHIND)) >= 3


def test_screenshots_of_the_desktop_and_phone_layouts(page):
    """The pictures in docs/screenshots/; `DOC_SCREENSHOTS=1` refreshes the committed ones."""
    photos = {}
    for sample in ("two-sideways.jpg", "five-marker.png", "three-photo.jpg"):
        shown = submitted(
            page, lambda sample=sample: page.set_input_files("#file", SAMPLES / sample)
        )
        photos[sample] = shown["id"]
    draw(page, DOT)  # a history entry marked as not a digit, and corrected so
    submitted(page, lambda: page.click("#send"))
    page.click("#answer .correct button[data-digit=none]")
    expect(page.locator("#answer .correct-status")).to_have_text("Thanks: recorded as not a digit")
    page.click("#clear")
    draw(page, SEVEN)
    prediction = submitted(page, lambda: page.click("#send"))
    expect(page.locator("#history li").first).to_have_attribute("data-id", prediction["id"])
    expect(page.locator("#history li").first.locator("img.thumb")).to_be_visible()
    expect(page.locator("#history .h-feedback")).to_have_text(["corrected: not a digit"])
    targets = [ARTIFACTS]
    if os.environ.get("DOC_SCREENSHOTS") == "1":
        targets.append(DOC_SCREENSHOTS)

    def shoot(name: str, full_page: bool = True) -> None:
        for target in targets:
            target.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=target / f"{name}.png", full_page=full_page)

    for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.evaluate("window.scrollTo(0, 0)")
        no_horizontal_scroll(page)
        shoot(name)
    page.set_viewport_size(DESKTOP)
    page.locator(f"#history li[data-id='{photos['three-photo.jpg']}'] button").click()
    expect(page.locator("#detail-upload")).to_be_visible()
    expect(page.locator("#detail-seen")).to_have_js_property("complete", True)
    shoot("detail", full_page=False)  # the modal's backdrop covers the viewport only


@pytest.fixture(scope="module")
def token_url(model_server, tmp_path_factory) -> Iterator[str]:
    """API_TOKEN set (the history is closed), predictions open, feedback tokens given."""
    sqlite_path = tmp_path_factory.mktemp("token") / "predictions.sqlite3"
    settings = {"API_TOKEN": API_TOKEN, "FEEDBACK_SECRET": FEEDBACK_SECRET}
    with running_function(model_server, sqlite_path, **settings) as url:
        yield url


@pytest.fixture
def token_page(browser, token_url, request) -> Iterator[Page]:
    yield from open_page(browser, token_url, request)


def test_my_predictions_show_with_their_own_tokens_without_the_api_token(token_page):
    """#23: a person sees their own predictions and pictures through the page with each
    prediction's feedback token; everyone's history still needs the API token."""
    page = token_page
    prediction = submitted(page, lambda: page.set_input_files("#file", SAMPLES / "seven.png"))
    page.reload()
    expect(page.locator("#scope-mine")).to_be_checked()
    newest = page.locator("#history li").first
    expect(newest).to_have_attribute("data-id", prediction["id"])
    expect(newest.locator("img.thumb")).to_be_visible()
    expect(page.locator("#token-form")).to_be_hidden()
    assert page.evaluate("Object.values(sessionStorage)") == []  # no API token was given
    show_everyones(page)
    expect(page.locator("#history-status")).to_have_text("The history needs the API token.")
