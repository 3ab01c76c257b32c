"""Structure-aware fuzzing (issue 12, item 5): image files built from their parts, with
fields mutated, through the decoding path the function runs; and any Unicode or control
character in every query parameter and header, through the real app.

Files are built chunk by chunk (PNG: IHDR, PLTE, tRNS, iCCP, zTXt, eXIf, acTL/fcTL, IDAT),
marker by marker (JPEG: APPn with EXIF and ICC, DQT, SOFn, DHT, SOS and entropy data),
block by block (GIF: the screen, colour tables, extensions, many frames) and entry by
entry (TIFF: an IFD whose sizes, types, counts, offsets, strips and tiles are drawn), and
WebP animations with many frames. Properties, per input: an MNIST input or an ImageError
(never another exception: a 500), at most CPU_BOUND s of this thread's CPU time, and at
most MEMORY_BOUND of peak RSS over the RSS before it (VmHWM, reset through
/proc/self/clear_refs: tracemalloc cannot see Pillow's C allocations). The budgets are
the function's defaults (128 MiB of decoded memory, 1 s of decoding CPU). Derandomized,
fixed example counts, as in test_preprocess_fuzz.py.
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from recognizer import preprocess
from recognizer.config import Settings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

MiB = 1024 * 1024
DEFAULTS = Settings()
CPU_BOUND = 2.0  # the acceptance bound per corpus entry; the decode budget itself is 1 s
MEMORY_BOUND = 150 * 1000 * 1000  # over the RSS before the input (the acceptance bound)
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _vm(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def run_pipeline(data: bytes) -> None:
    """What Recognizer does with one image: open with the budgets, decode, preprocess."""
    deadline = preprocess.DecodeDeadline(DEFAULTS.decode_cpu_seconds)
    opened = preprocess.open_image(
        data, DEFAULTS.max_image_pixels, DEFAULTS.decode_budget_bytes, deadline
    )
    image = preprocess.decode_opened(opened)
    deadline.check()
    pixels = preprocess.from_image(image)
    deadline.check()
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8


def assert_bounded(data: bytes) -> None:
    CLEAR_REFS.write_text("5")  # VmHWM := VmRSS
    before = _vm("VmRSS:")
    started = time.thread_time()
    try:
        run_pipeline(data)
    except preprocess.ImageError as error:
        assert str(error)
    spent = time.thread_time() - started
    grown = _vm("VmHWM:") - before
    assert spent <= CPU_BOUND, f"{spent:.2f} s of CPU for {len(data)} bytes"
    assert grown <= MEMORY_BOUND, f"peak RSS grew {grown / MiB:.0f} MiB for {len(data)} bytes"


# --- PNG -------------------------------------------------------------------------------------

DIMENSIONS = st.sampled_from([0, 1, 2, 28, 320, 4000, 7000, 2**16, 2**31 - 1, 2**32 - 1])
SMALL = st.integers(1, 64)


def png_chunk(kind: bytes, body: bytes, crc_ok: bool = True) -> bytes:
    crc = zlib.crc32(kind + body) if crc_ok else 0
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc & 0xFFFFFFFF)


@st.composite
def png_files(draw: st.DrawFn) -> bytes:
    width = draw(SMALL | SMALL | DIMENSIONS)
    height = draw(SMALL | SMALL | DIMENSIONS)
    valid = [(8, 0), (8, 2), (8, 3), (8, 4), (8, 6), (16, 0), (16, 2), (16, 6), (1, 0), (4, 3)]
    depth, colour = draw(st.sampled_from(valid * 3 + [(3, 0), (0, 2), (8, 1), (8, 7), (16, 3)]))
    interlace = draw(st.sampled_from([0, 0, 1, 2]))
    chunks = [
        png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace))
    ]
    extras = draw(
        st.lists(
            st.sampled_from(["PLTE", "tRNS", "iCCP", "zTXt", "eXIf", "acTL", "fcTL", "bad-crc"]),
            max_size=6,
        )
    )
    for kind in extras:
        if kind == "PLTE":
            chunks.append(
                png_chunk(
                    b"PLTE", bytes(i % 256 for i in range(3 * draw(st.integers(0, 300)) % 769))
                )
            )
        elif kind == "tRNS":
            chunks.append(png_chunk(b"tRNS", draw(st.binary(max_size=300))))
        elif kind == "iCCP":  # a profile that inflates to many MiB
            size = draw(st.sampled_from([0, 128, MiB, 16 * MiB, 48 * MiB]))
            chunks.append(png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(bytes(size), 9)))
        elif kind == "zTXt":
            size = draw(st.sampled_from([10, MiB, 32 * MiB]))
            chunks.append(png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(bytes(size), 9)))
        elif kind == "eXIf":
            chunks.append(png_chunk(b"eXIf", draw(tiff_ifd_bytes())))
        elif kind == "acTL":  # APNG: many frames claimed
            frames = draw(st.sampled_from([1, 2, 1000, 2**31 - 1]))
            chunks.append(png_chunk(b"acTL", struct.pack(">II", frames, 0)))
        elif kind == "fcTL":
            fw, fh = draw(SMALL | DIMENSIONS), draw(SMALL | DIMENSIONS)
            chunks.append(
                png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, fw, fh, 0, 0, 1, 1, 0, 0))
            )
        else:
            chunks.append(png_chunk(b"tEXt", b"a\x00b", crc_ok=False))
    row = max(1, min(width, 256) * 8)
    raw = bytes(draw(st.sampled_from([0, 1, row * min(height, 256), 4 * MiB])))
    idat = zlib.compress(raw, 9)
    pieces = draw(st.integers(1, 4))
    step = -(-len(idat) // pieces)
    chunks += [png_chunk(b"IDAT", idat[i : i + step]) for i in range(0, len(idat), step)]
    if draw(st.booleans()):
        chunks.append(png_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


# --- JPEG ------------------------------------------------------------------------------------


def segment(code: int, body: bytes) -> bytes:
    return bytes([0xFF, code]) + struct.pack(">H", min(len(body) + 2, 0xFFFF)) + body[:0xFFFD]


@st.composite
def jpeg_files(draw: st.DrawFn) -> bytes:
    out = [b"\xff\xd8"]
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["exif", "icc", "app", "com"]))
        if kind == "exif":
            out.append(segment(0xE1, b"Exif\x00\x00" + draw(tiff_ifd_bytes())))
        elif kind == "icc":  # ICC profiles span APP2 segments: claim many of them
            count = draw(st.integers(1, 255))
            for index in range(1, draw(st.integers(1, 8)) + 1):
                out.append(segment(0xE2, b"ICC_PROFILE\x00" + bytes([index, count]) + bytes(60000)))
        elif kind == "app":
            out.append(segment(draw(st.integers(0xE0, 0xEF)), draw(st.binary(max_size=64))))
        else:
            out.append(segment(0xFE, draw(st.binary(max_size=64))))
    out.append(
        segment(0xDB, b"\x00" + bytes(draw(st.sampled_from([1, 2, 255])) for _ in range(64)))
    )
    sof = draw(st.sampled_from([0xC0, 0xC1, 0xC2, 0xC3, 0xC9]))
    components = draw(st.sampled_from([1, 3, 4, 0, 2]))
    sampling = draw(st.sampled_from([0x11, 0x22, 0x44, 0x00, 0xFF]))
    width, height = draw(SMALL | DIMENSIONS) & 0xFFFF, draw(SMALL | DIMENSIONS) & 0xFFFF
    body = struct.pack(">BHHB", draw(st.sampled_from([8, 12, 16, 0])), height, width, components)
    body += b"".join(bytes([i + 1, sampling, 0]) for i in range(components))
    out.append(segment(sof, body))
    # A DC and an AC table with one code each, or garbage.
    out.append(segment(0xC4, b"\x00" + b"\x01" + bytes(15) + b"\x00"))
    out.append(segment(0xC4, b"\x10" + b"\x01" + bytes(15) + b"\x00"))
    spectrals = [(0, 63, 0), (0, 0, 0x10), (1, 63, 0x21), (0, 0, 0x01), (1, 5, 0x10)]
    spectrals = draw(st.sampled_from([spectrals, spectrals, [*spectrals, (1, 5, 0xFF)]]))
    for _ in range(draw(st.sampled_from([1, 1, 2, 6, 10, 70]))):
        spectral = draw(st.sampled_from(spectrals))
        scan = bytes([1, 1, 0]) + bytes(spectral)
        out.append(segment(0xDA, scan) + draw(st.binary(max_size=32)).replace(b"\xff", b"\xff\x00"))
    if draw(st.booleans()):
        out.append(b"\xff\xd9")
    return b"".join(out)


# --- GIF -------------------------------------------------------------------------------------


@st.composite
def gif_files(draw: st.DrawFn) -> bytes:
    width, height = draw(SMALL | DIMENSIONS) & 0xFFFF, draw(SMALL | DIMENSIONS) & 0xFFFF
    table_bits = draw(st.integers(0, 7))
    has_table = draw(st.booleans())
    out = [
        b"GIF89a",
        struct.pack("<HHBBB", width, height, (0x80 if has_table else 0) | table_bits, 0, 0),
    ]
    if has_table:
        out.append(bytes(3 << (table_bits + 1)))
    for _ in range(draw(st.integers(0, 3))):
        label = draw(st.sampled_from([0xF9, 0xFE, 0xFF, 0x01]))
        blocks = draw(st.sampled_from([1, 10, 1000, 1100]))
        out.append(bytes([0x21, label]) + b"\x01a" * blocks + b"\x00")
    frames = draw(st.sampled_from([1, 2, 50, 2000]))
    frame_w = draw(SMALL | DIMENSIONS) & 0xFFFF
    frame_h = draw(SMALL | DIMENSIONS) & 0xFFFF
    lzw = bytes([2]) + draw(st.sampled_from([b"\x02\x4c\x01\x00", b"\x01\x00\x00", b"\x00"]))
    frame = (
        b"\x21\xf9\x04\x00\x00\x00\x00\x00"
        + b"\x2c"
        + struct.pack("<HHHHB", 0, 0, frame_w, frame_h, 0)
        + lzw
    )
    out.append(frame * frames)
    if draw(st.booleans()):
        out.append(b"\x3b")
    return b"".join(out)


# --- TIFF ------------------------------------------------------------------------------------

TYPES = {1: "B", 3: "H", 4: "I", 7: "B", 16: "Q"}


@st.composite
def tiff_ifd_bytes(draw: st.DrawFn) -> bytes:
    """A little-endian TIFF: one IFD of drawn entries, values inline or behind offsets."""
    width = draw(SMALL | DIMENSIONS)
    height = draw(SMALL | DIMENSIONS)
    entries: dict[int, tuple[int, list[int]]] = {
        256: (4, [width & 0xFFFFFFFF]),
        257: (4, [height & 0xFFFFFFFF]),
        259: (3, [draw(st.sampled_from([1, 1, 1, 5, 7, 8, 32773, 32946, 2, 0]))]),
    }
    kinds = [(1, 1, 8), (0, 1, 8), (1, 1, 16), (2, 3, 8), (5, 4, 8), (1, 1, 1), (1, 1, 32)]
    odd = [(8, 3, 8), (6, 3, 8), (3, 1, 8), (2, 255, 8), (1, 1, 64), (32844, 1, 16), (2, 0, 8)]
    photometric, samples, bits = draw(st.sampled_from(kinds * 2 + odd))
    entries[262] = (3, [photometric])
    entries[277] = (3, [samples])
    entries[258] = (3, [bits] * draw(st.sampled_from([max(1, samples), max(1, samples), 1])))
    if bits == 32 and draw(st.booleans()):
        entries[339] = (3, [3])  # SampleFormat: float
    strips = draw(st.sampled_from([1, 1, 2, 1000, 20000]))
    if draw(st.booleans()):  # strips
        entries[278] = (4, [draw(st.sampled_from([1, height & 0xFFFFFFFF, 2**32 - 1]))])
        entries[273] = (4, [8] * strips)
        entries[279] = (4, [draw(st.sampled_from([64, 256, 0, 1, 2**31]))] * strips)
    else:  # tiles
        tile = draw(st.sampled_from([16, 256, 65536 - 16]))
        entries[322] = (4, [tile])
        entries[323] = (4, [tile])
        entries[324] = (4, [8] * strips)
        entries[325] = (4, [draw(st.sampled_from([0, 64, 2**31]))] * strips)
    if draw(st.booleans()):  # an ICC profile, of any claimed size
        entries[34675] = (7, [0] * draw(st.sampled_from([0, 128, 300000])))
    if draw(st.booleans()):  # an EXIF IFD pointer, anywhere
        entries[34665] = (4, [draw(st.sampled_from([0, 8, 2**31]))])
    if draw(st.booleans()):
        entries[274] = (3, [draw(st.integers(0, 10))])  # orientation
    for tag in draw(st.lists(st.sampled_from(sorted(entries)), max_size=2) | st.just([])):
        kind = draw(st.sampled_from(sorted(TYPES)))
        entries[tag] = (kind, entries[tag][1][:1] * draw(st.sampled_from([0, 1, 3])))
    sorted_entries = sorted(entries.items())
    header = b"II*\x00" + struct.pack("<I", 8)
    ifd_size = 2 + 12 * len(sorted_entries) + 4
    data_at = 8 + ifd_size
    ifd = [struct.pack("<H", len(sorted_entries))]
    blobs = []
    for tag, (kind, values) in sorted_entries:
        packed = struct.pack(
            "<" + TYPES[kind] * len(values),
            *(v % (1 << (8 * struct.calcsize(TYPES[kind]))) for v in values),
        )
        if len(packed) <= 4:
            ifd.append(struct.pack("<HHI", tag, kind, len(values)) + packed.ljust(4, b"\x00"))
        else:
            ifd.append(struct.pack("<HHII", tag, kind, len(values), data_at))
            blobs.append(packed)
            data_at += len(packed)
    ifd.append(struct.pack("<I", draw(st.sampled_from([0, 0, 8]))))  # next IFD: none, or a loop
    pixels = draw(st.binary(max_size=256))
    return header + b"".join(ifd) + b"".join(blobs) + pixels


# --- WebP animations ---------------------------------------------------------------------------


@st.composite
def webp_animations(draw: st.DrawFn) -> bytes:
    frames = draw(st.sampled_from([2, 20, 300]))
    side = draw(st.sampled_from([8, 64, 512]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    first = Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).convert("RGB")
    buffer = io.BytesIO()
    first.save(
        buffer,
        format="WEBP",
        save_all=True,
        append_images=[first] * (frames - 1),
        lossless=draw(st.booleans()),
        quality=10,
        method=0,
    )
    data = buffer.getvalue()
    if draw(st.booleans()):  # a canvas claimed far larger than the frames (VP8X)
        at = data.find(b"VP8X")
        if at > 0:
            w = draw(st.sampled_from([6299, 2**24 - 1])).to_bytes(3, "little")
            data = data[: at + 12] + w + w + data[at + 18 :]
    return data


@fuzz(examples=400)
@given(png_files())
def test_png_chunk_sequences_are_bounded(data):
    assert_bounded(data)


@fuzz(examples=600)
@given(jpeg_files())
def test_jpeg_marker_sequences_are_bounded(data):
    assert_bounded(data)


@fuzz(examples=500)
@given(gif_files())
def test_gif_block_sequences_are_bounded(data):
    assert_bounded(data)


@fuzz(examples=800)
@given(tiff_ifd_bytes())
def test_tiff_ifds_are_bounded(data):
    assert_bounded(data)


@fuzz(examples=40)
@given(webp_animations())
def test_webp_animations_are_bounded(data):
    assert_bounded(data)


# --- Unicode and control characters in every parameter and header ------------------------------

TOKEN = "s3cret-token"
SEVEN = (Path(__file__).resolve().parents[1] / "data" / "samples" / "seven.png").read_bytes()
# Anything: control characters, NUL, surrogates' neighbours, RTL marks, full-width digits,
# superscripts, combining marks; and the few values that mean something here.
ODD = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40
) | st.sampled_from(
    [
        "1",
        "stable",
        "input",
        "Bearer x",
        f"Bearer {TOKEN}",
        "https://digits.example",
        "\u00b9",
        "\uff11",
        "\u200f1",
        "%ff",
    ]
)
PARAMETERS = ["limit", "version", "label", "include"]
HEADERS = [
    "Idempotency-Key",
    "Authorization",
    "Content-Type",
    "X-Client-Id",
    "Origin",
    "X-Request-Id",
]
# 403: an Origin of another site on a POST is a cross-site write (access.refuse_cross_site).
ERROR_CODES = {400, 401, 403, 404, 413, 415, 422, 503}


def on_the_wire(value: str) -> str:
    """A header value as a WSGI server hands it over: the UTF-8 bytes read as Latin-1,
    without CR or LF (they end a header line; gunicorn refuses a bare one)."""
    return value.encode("utf-8").decode("latin-1").replace("\r", "").replace("\n", "")


@pytest.fixture(scope="module")
def odd_client(tmp_path_factory):
    import functions_framework

    from tests.conftest import ROOT, SHELL_SETTINGS, shipped_stand_in

    stand_in = shipped_stand_in().start()
    mp = pytest.MonkeyPatch()
    mp.setenv("MODEL_SERVER_URL", stand_in.url)
    mp.setenv("SQLITE_PATH", str(tmp_path_factory.mktemp("odd") / "p.sqlite3"))
    for name in SHELL_SETTINGS:
        mp.delenv(name, raising=False)
    mp.setenv("CORS_ALLOWED_ORIGINS", "https://digits.example")
    mp.setenv("API_TOKEN", TOKEN)  # the history needs it: every Authorization is compared
    app = functions_framework.create_app("recognize", str(ROOT / "function" / "main.py"))
    yield app.test_client()
    mp.undo()
    stand_in.close()


def assert_contract(response) -> None:
    assert response.status_code != 500, response.get_data(as_text=True)[:300]
    body = response.get_json()
    if response.status_code == 200:
        assert "predictions" in body
    else:
        assert response.status_code in ERROR_CODES, response.status_code
        assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"]
    assert response.headers["X-Request-Id"].isascii()


@fuzz(examples=1_000)
@given(
    st.dictionaries(st.sampled_from(PARAMETERS), ODD, max_size=3),
    st.dictionaries(st.sampled_from(HEADERS), ODD, max_size=4),
    st.sampled_from(["/predict", "/predictions", "/predictions/x", "/readyz"]),
)
def test_any_character_in_any_parameter_or_header_is_never_a_500(odd_client, query, headers, path):
    sent = {name: on_the_wire(value) for name, value in headers.items()}
    if path == "/predict":
        sent.setdefault("Content-Type", "image/png")
        response = odd_client.post(path, query_string=query, headers=sent, data=SEVEN)
    else:
        response = odd_client.get(path, query_string=query, headers=sent)
    if path == "/readyz":
        assert response.status_code == 200
        return
    assert_contract(response)
