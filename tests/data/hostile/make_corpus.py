"""Write the hostile-input corpus: broken, malicious and awkward uploads, and what they get.

Run from the repository root: `.venv/bin/python -m tests.data.hostile.make_corpus`.
It is deterministic (fixed MNIST test digits, fixed seeds, fixed ZIP timestamps), so a
rerun rewrites the same bytes; commit the files and `manifest.json` it writes.

Each manifest entry says how the request is sent and what the function must answer:

    name     unique id, used as the test id
    request  method (POST), path (/predict), query or query_file, headers, and the body:
             body "raw" sends `file` with `content_type` (null: no Content-Type header);
             body "multipart" sends `files` (each `copies` times) as fields named `field`;
             body "none" sends nothing
    expect   status, and the error `code` or, for a 200, the `digit`
    why      one line: what the entry is and why it gets that answer

Every file is under 100 KiB; the bombs are small files whose headers claim huge images.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from training.data import load_mnist

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.json"
MAX_FILE_BYTES = 100 * 1024  # each committed file stays under 100 KiB
QUERY_BYTES = 100_000  # the "very long query string" entries
BATCH_OVER_LIMIT = 65  # MAX_BATCH_IMAGES is 64

# MNIST test-set indices of the digits used; the committed models get all of them right.
SEVEN, TWO, ONE, ZERO, FOUR, NINE, SIX, THREE, FIVE = 0, 1, 2, 3, 4, 7, 11, 18, 8


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def with_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0) claiming another size; the scan data is unchanged."""
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[: sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9 :]


def with_exif_segment(jpeg: bytes, tiff: bytes) -> bytes:
    """The JPEG with an APP1 Exif segment holding `tiff` (a TIFF header and IFD) after SOI."""
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def orientation_ifd(orientation: int) -> bytes:
    """A little-endian TIFF IFD with one entry: Orientation (0x0112, SHORT) = `orientation`."""
    entry = struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + entry + b"\x00" * 4


class Corpus:
    """Collects files and manifest entries, then writes both."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.entries: list[dict[str, object]] = []

    def file(self, name: str, data: bytes) -> str:
        assert self.files.get(name, data) == data, f"{name} written twice with different bytes"
        self.files[name] = data
        return name

    def raw(
        self,
        name: str,
        file: str,
        content_type: str | None,
        why: str,
        *,
        query: str = "",
        query_file: str | None = None,
        **expect: object,
    ) -> None:
        request: dict[str, object] = {"body": "raw", "file": file, "content_type": content_type}
        self._add(name, request, query, query_file, expect, why)

    def multipart(
        self,
        name: str,
        files: list[str],
        why: str,
        *,
        field: str = "image",
        copies: int = 1,
        **expect: object,
    ) -> None:
        request = {"body": "multipart", "files": files, "field": field, "copies": copies}
        self._add(name, request, "", None, expect, why)

    def get(self, name: str, path: str, why: str, *, query: str = "", **expect: object) -> None:
        self._add(name, {"method": "GET", "path": path, "body": "none"}, query, None, expect, why)

    def _add(
        self,
        name: str,
        request: dict[str, object],
        query: str,
        query_file: str | None,
        expect: dict[str, object],
        why: str,
    ) -> None:
        assert name not in {entry["name"] for entry in self.entries}, name
        request = {"method": "POST", "path": "/predict", **request}
        if query:
            request["query"] = query
        if query_file:
            request["query_file"] = query_file
        self.entries.append({"name": name, "request": request, "expect": expect, "why": why})

    def write(self) -> None:
        for stale in HERE.iterdir():
            if stale.is_file() and stale.suffix != ".py" and stale.name not in self.files:
                stale.unlink()
        for name, data in self.files.items():
            assert len(data) < MAX_FILE_BYTES, f"{name} is {len(data):,} bytes"
            (HERE / name).write_bytes(data)
        MANIFEST.write_text(json.dumps({"entries": self.entries}, indent=2) + "\n")


def build(digits: np.ndarray, labels: np.ndarray) -> Corpus:
    corpus = Corpus()

    def paper(index: int, side: int = 112) -> Image.Image:
        """MNIST test digit `index` as dark ink on white paper, `side` px square."""
        return Image.fromarray(255 - digits[index]).resize((side, side), Image.Resampling.BICUBIC)

    def label(index: int) -> int:
        return int(labels[index])

    seven_png = corpus.file("digit-7.png", encode(Image.fromarray(digits[SEVEN]), "PNG"))
    empty = corpus.file("empty.bin", b"")
    _transport_entries(corpus, seven_png, empty, label(SEVEN))
    _json_entries(corpus, corpus.files[seven_png], label(SEVEN))
    _broken_file_entries(corpus, paper(SEVEN, 200), seven_png)
    _bomb_entries(corpus, paper(SEVEN, 112))
    _costly_entries(corpus, corpus.files[seven_png])
    _amplification_entries(corpus, digits, paper(SEVEN), label(SEVEN))
    _blank_entries(corpus)
    _format_entries(corpus, paper, label)
    _exif_entries(corpus, paper, label)
    _query_entries(corpus, seven_png, label(SEVEN))
    return corpus


def _transport_entries(corpus: Corpus, seven_png: str, empty: str, seven: int) -> None:
    """How the body is sent: Content-Type, multipart fields, emptiness, batch size."""
    corpus.raw("empty-body", empty, "image/png", "no bytes at all", status=400, code="empty_body")
    corpus.raw(
        "empty-octet-stream",
        empty,
        "application/octet-stream",
        "no bytes, as a generic binary upload",
        status=400,
        code="empty_body",
    )
    corpus.raw(
        "empty-json",
        empty,
        "application/json",
        "JSON promised, nothing sent",
        status=400,
        code="empty_body",
    )
    corpus.multipart(
        "multipart-empty-file",
        [empty],
        "a file field named image with a zero-byte file",
        status=400,
        code="empty_body",
    )
    text = corpus.file("hello.txt", b"hello, world\nthis is not a digit\n")
    corpus.raw(
        "text-as-text-plain",
        text,
        "text/plain",
        "text is not an accepted media type",
        status=415,
        code="unsupported_media_type",
    )
    corpus.raw(
        "text-as-image-png",
        text,
        "image/png",
        "text that claims to be a PNG: the bytes decide",
        status=400,
        code="not_an_image",
    )
    corpus.raw(
        "png-as-text-plain",
        seven_png,
        "text/plain",
        "a real PNG with the wrong Content-Type",
        status=415,
        code="unsupported_media_type",
    )
    corpus.raw(
        "png-without-content-type",
        seven_png,
        None,
        "a real PNG with no Content-Type header at all",
        status=415,
        code="unsupported_media_type",
    )
    corpus.raw(
        "png-as-form-urlencoded",
        seven_png,
        "application/x-www-form-urlencoded",
        "a real PNG sent as an HTML form body",
        status=415,
        code="unsupported_media_type",
    )
    corpus.raw(
        "multipart-without-boundary",
        seven_png,
        "multipart/form-data",
        "multipart declared without a boundary: no fields can be found",
        status=400,
        code="missing_image",
    )
    corpus.multipart(
        "multipart-wrong-field-name",
        [seven_png],
        "the file is in a field named 'file', not 'image'",
        field="file",
        status=400,
        code="missing_image",
    )
    corpus.multipart(
        f"multipart-{BATCH_OVER_LIMIT}-files",
        [seven_png],
        "one file more than MAX_BATCH_IMAGES (64)",
        copies=BATCH_OVER_LIMIT,
        status=413,
        code="too_many_images",
    )
    truncated = corpus.file(
        "digit-7-truncated.png", corpus.files[seven_png][: len(corpus.files[seven_png]) // 2]
    )
    corpus.multipart(
        "multipart-batch-with-one-broken-file",
        [seven_png, truncated],
        "a batch fails as a whole; the message names image 2 and nothing is recorded",
        status=400,
        code="not_an_image",
    )
    corpus.multipart(
        "multipart-valid",
        [seven_png],
        "control: the same file in the right field is recognised",
        status=200,
        digit=seven,
    )


def _json_entries(corpus: Corpus, seven: bytes, seven_label: int) -> None:
    """JSON bodies: wrong shapes, bad base64, pathological documents."""

    def json_file(name: str, document: object) -> str:
        return corpus.file(name, json.dumps(document).encode())

    cases: list[tuple[str, str, int, str, str]] = [
        (
            "json-without-image-field",
            json_file("json-no-image-field.json", {"picture": b64(seven)}),
            400,
            "missing_image",
            'an object with neither "image" nor "images"',
        ),
        (
            "json-array",
            json_file("json-array.json", [b64(seven)]),
            400,
            "invalid_json",
            "JSON that is an array, not an object",
        ),
        (
            "json-string",
            json_file("json-string.json", b64(seven)),
            400,
            "invalid_json",
            "JSON that is a bare string",
        ),
        (
            "json-truncated",
            corpus.file("json-truncated.json", ('{"image": "' + b64(seven)[:40]).encode()),
            400,
            "invalid_json",
            "a JSON document cut off mid-string",
        ),
        (
            "json-not-utf8",
            corpus.file("json-latin1.json", '{"image": "caf\u00e9"}'.encode("latin-1")),
            400,
            "invalid_json",
            "JSON bytes that are not UTF-8",
        ),
        (
            "json-deeply-nested",
            corpus.file("json-nested.json", b"[" * 40_000 + b"]" * 40_000),
            400,
            "invalid_json",
            "40,000 nested arrays: the parser's recursion limit, not a crash",
        ),
        (
            "json-image-is-a-number",
            json_file("json-image-number.json", {"image": 7}),
            400,
            "invalid_json",
            "the image is a number, not a base64 string",
        ),
        (
            "json-image-is-null",
            json_file("json-image-null.json", {"image": None}),
            400,
            "invalid_json",
            "the image is null",
        ),
        (
            "json-images-not-a-list",
            json_file("json-images-string.json", {"images": b64(seven)}),
            400,
            "invalid_json",
            '"images" is a string, not a list',
        ),
        (
            "json-images-empty-list",
            json_file("json-images-empty.json", {"images": []}),
            400,
            "missing_image",
            "an empty batch: nothing to recognise",
        ),
        (
            "json-image-empty-string",
            json_file("json-image-empty.json", {"image": ""}),
            400,
            "empty_body",
            "base64 of zero bytes",
        ),
        (
            "json-invalid-base64",
            json_file("json-bad-base64.json", {"image": "this is *not* base64!"}),
            400,
            "invalid_base64",
            "characters outside the base64 alphabet",
        ),
        (
            "json-base64-bad-padding",
            json_file("json-bad-padding.json", {"image": b64(seven)[:-3]}),
            400,
            "invalid_base64",
            "base64 with its padding cut off",
        ),
        (
            "json-base64-non-ascii",
            json_file("json-non-ascii-base64.json", {"image": "iVBOR\u00e9w0KGgo="}),
            400,
            "invalid_base64",
            "a non-ASCII character inside the base64",
        ),
        (
            "json-base64-of-text",
            json_file("json-base64-text.json", {"image": b64(b"hello, world")}),
            400,
            "not_an_image",
            "valid base64 of bytes that are not an image",
        ),
        (
            f"json-{BATCH_OVER_LIMIT}-images",
            json_file("json-65-images.json", {"images": [b64(seven)] * BATCH_OVER_LIMIT}),
            413,
            "too_many_images",
            "one image more than MAX_BATCH_IMAGES (64)",
        ),
    ]
    for name, file, status, code, why in cases:
        corpus.raw(name, file, "application/json", why, status=status, code=code)
    corpus.raw(
        "json-data-url",
        json_file("json-data-url.json", {"image": "data:image/png;base64," + b64(seven)}),
        "application/json",
        "control: a browser canvas data: URL is accepted",
        status=200,
        digit=seven_label,
    )


def _broken_file_entries(corpus: Corpus, page: Image.Image, seven_png: str) -> None:
    """Files that are not images, or are broken ones."""
    png = encode(page, "PNG")
    jpeg = encode(page, "JPEG", quality=90)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        info = zipfile.ZipInfo("digit.png", date_time=(2020, 1, 1, 0, 0, 0))
        zipped.writestr(info, png)
    svg = (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28">'
        b'<path d="M6 6 H22 L12 24" stroke="black" stroke-width="3" fill="none"/></svg>\n'
    )
    pdf = (
        b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
        b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n"
        b"trailer << /Root 1 0 R >>\n%%EOF\n"
    )
    eps = (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n"
        b"newpath 6 22 moveto 22 22 lineto 12 4 lineto 3 setlinewidth stroke\nshowpage\n%%EOF\n"
    )
    html = b"<!doctype html><title>digit</title><img src=x onerror=alert(1)>\n"
    signature = b"\x89PNG\r\n\x1a\n"
    zero_width = struct.pack(">IIBBBBB", 0, 28, 8, 0, 0, 0, 0)
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # the IHDR chunk's CRC
    random_bytes = np.random.default_rng(6).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    cases: list[tuple[str, str, bytes, str, int, str, str]] = [
        ("truncated-png", "truncated.png", png[: len(png) // 2], "image/png", 400,
         "not_an_image", "a PNG cut off halfway through its pixel data"),
        ("truncated-jpeg", "truncated.jpg", jpeg[: len(jpeg) // 2], "image/jpeg", 400,
         "not_an_image", "a JPEG cut off halfway through its scan"),
        ("png-signature-only", "signature-only.png", signature, "image/png", 400,
         "not_an_image", "the 8-byte PNG signature and nothing else"),
        ("png-bad-crc", "bad-crc.png", bytes(bad_crc), "image/png", 400, "not_an_image",
         "a PNG whose header chunk fails its checksum"),
        ("png-zero-width", "zero-width.png", signature + png_chunk(b"IHDR", zero_width)
         + png_chunk(b"IEND", b""), "image/png", 400, "not_an_image",
         "a PNG header declaring a 0x28 image"),
        ("random-bytes", "random.bin", random_bytes, "application/octet-stream", 400,
         "not_an_image", "4 KB of noise"),
        ("zip-named-png", "archive-named.png", archive.getvalue(), "image/png", 400,
         "not_an_image", "a ZIP archive (holding a PNG) named .png and sent as image/png"),
        ("svg", "digit.svg", svg, "image/svg+xml", 400, "not_an_image",
         "vector graphics are image/* but not a raster format we decode"),
        ("pdf-as-pdf", "document.pdf", pdf, "application/pdf", 415, "unsupported_media_type",
         "a PDF with its own media type"),
        ("pdf-as-octet-stream", "document.pdf", pdf, "application/octet-stream", 400,
         "not_an_image", "a PDF sent as generic binary"),
        ("eps", "digit.eps", eps, "image/x-eps", 400, "not_an_image",
         "PostScript: Pillow would run Ghostscript on it, so the format is not read at all"),
        ("html-as-image", "page.html", html, "image/png", 400, "not_an_image",
         "an HTML page with a script, sent as an image: never echoed back as HTML"),
        ("html-as-text-html", "page.html", html, "text/html", 415, "unsupported_media_type",
         "an HTML page with its own media type"),
    ]  # fmt: skip
    for name, file, data, content_type, status, code, why in cases:
        corpus.raw(name, corpus.file(file, data), content_type, why, status=status, code=code)
    corpus.raw(
        "png-with-ztxt-bomb",
        corpus.file("ztxt-bomb.png", _with_text_bomb(corpus.files[seven_png])),
        "image/png",
        "a text chunk that inflates to 60 MB: Pillow stops at 1 MB and the file is refused",
        status=400,
        code="not_an_image",
    )


def _with_text_bomb(png: bytes) -> bytes:
    """`png` with a compressed text (zTXt) chunk that inflates to 60 MB of zeros."""
    payload = b"Comment\x00\x00" + zlib.compress(bytes(60_000_000), 9)
    return png[:33] + png_chunk(b"zTXt", payload) + png[33:]


def _bomb_entries(corpus: Corpus, page: Image.Image) -> None:
    """Small files whose headers claim more pixels than the limit: refused before decoding."""
    gif = encode(Image.new("P", (16, 16)), "GIF")
    bmp = encode(page.convert("L"), "BMP")
    jpeg = encode(page, "JPEG")
    cases: list[tuple[str, str, bytes, str, str]] = [
        (
            "bomb-png-20000x20000",
            "bomb-20000x20000.png",
            encode(Image.new("1", (20_000, 20_000)), "PNG", optimize=True),
            "image/png",
            "400 million pixels of zeros in 48 KB: would take 400 MB to decode",
        ),
        (
            "bomb-tiff-group4-20000x20000",
            "bomb-20000x20000.tif",
            encode(Image.new("1", (20_000, 20_000), 1), "TIFF", compression="group4"),
            "image/tiff",
            "400 million fax-compressed pixels in 26 KB",
        ),
        (
            "bomb-gif-65535x65535",
            "bomb-65535x65535.gif",
            gif[:6] + struct.pack("<HH", 65_535, 65_535) + gif[10:],
            "image/gif",
            "a 16x16 GIF whose screen descriptor claims 65535x65535 (4.3 billion pixels)",
        ),
        (
            "bomb-jpeg-header-65500x65500",
            "bomb-65500x65500.jpg",
            with_jpeg_size(jpeg, 65_500, 65_500),
            "image/jpeg",
            "a small JPEG whose frame header claims 65500x65500",
        ),
        (
            "pixel-limit-png-8000x5001",
            "over-limit-8000x5001.png",
            encode(Image.new("L", (8_000, 5_001)), "PNG", optimize=True),
            "image/png",
            "40,008,000 pixels: just over MAX_IMAGE_PIXELS (40,000,000)",
        ),
        (
            "pixel-limit-webp-6400x6400",
            "over-limit-6400x6400.webp",
            encode(Image.new("RGBA", (6_400, 6_400), (255, 255, 255, 0)), "WEBP", lossless=True),
            "image/webp",
            "41 million RGBA pixels in 2 KB: would take 164 MB to decode",
        ),
        (
            "pixel-limit-jpeg-header-8000x5001",
            "over-limit-8000x5001.jpg",
            with_jpeg_size(jpeg, 8_000, 5_001),
            "image/jpeg",
            "a small JPEG whose header claims just over the pixel limit",
        ),
        (
            "pixel-limit-bmp-header-7000x7000",
            "over-limit-7000x7000.bmp",
            bmp[:18] + struct.pack("<ii", 7_000, 7_000) + bmp[26:],
            "image/bmp",
            "a small BMP whose header claims 49 million pixels",
        ),
    ]
    for name, file, data, content_type, why in cases:
        corpus.raw(name, corpus.file(file, data), content_type, why, status=413,
                   code="image_too_large")  # fmt: skip


def _costly_entries(corpus: Corpus, seven_png: bytes) -> None:
    """Files within the pixel limit that would cost too much work or memory to decode
    (issue 12): refused from their structure or their decoded size, before decoding."""
    empty_chunk = png_chunk(b"prIv", b"")  # a private ancillary chunk: skipped, but parsed
    cases: list[tuple[str, str, bytes, str, str, str]] = [
        (
            "jpeg-progressive-2000-empty-scans",
            "progressive-2000-empty-scans.jpg",
            _with_empty_scans(_progressive_page(4_000), 2_000),
            "image/jpeg",
            "image_too_complex",
            "a 4000x4000 progressive JPEG and 2,000 empty scans, each a pass over the image: "
            "2.5 s of CPU before it was refused from its markers",
        ),
        (
            "png-8000-empty-chunks",
            "8000-empty-chunks.png",
            seven_png[:33] + empty_chunk * 8_000 + seven_png[33:],
            "image/png",
            "image_too_complex",
            "a 28x28 PNG behind 8,000 empty chunks, each parsed in Python (twice, before)",
        ),
        (
            "gif-19000-comment-blocks",
            "19000-comment-blocks.gif",
            _with_comment_blocks(encode(Image.new("P", (16, 16)), "GIF"), 19_000),
            "image/gif",
            "image_too_complex",
            "a 16x16 GIF behind 19,000 one-byte comments, each read in Python",
        ),
        (
            "webp-lossless-6300x6300",
            "lossless-6300x6300.webp",
            encode(Image.new("RGBA", (6_300, 6_300), (255, 255, 255, 0)), "WEBP", lossless=True),
            "image/webp",
            "image_too_large",
            "39.7 million RGBA pixels in 2 KB, under MAX_IMAGE_PIXELS: libwebp's buffer and "
            "Pillow's copy took a worker up 600 MiB",
        ),
        (
            "rgba-png-4500x4500",
            "rgba-4500x4500.png",
            encode(Image.new("RGBA", (4_500, 4_500), (255, 255, 255, 0)), "PNG", optimize=True),
            "image/png",
            "image_too_large",
            "20 million RGBA pixels: 81 MB decoded and as much again premultiplied to resize",
        ),
    ]
    for name, file, data, content_type, code, why in cases:
        corpus.raw(name, corpus.file(file, data), content_type, why, status=413, code=code)
    # Within the decoded-memory budget: decoded, and found blank, at a bounded cost.
    for name, file, image, why in [
        ("cmyk-tiff-3500x3500-blank", "cmyk-3500x3500.tif", Image.new("CMYK", (3_500, 3_500)),
         "12 million CMYK pixels (49 MB decoded), blank: within the memory budget"),
        ("float-tiff-3500x3500-blank", "float-3500x3500.tif",
         Image.new("F", (3_500, 3_500), 0.0),
         "12 million 32-bit float pixels (49 MB decoded), blank: within the memory budget"),
    ]:  # fmt: skip
        data = encode(image, "TIFF", compression="tiff_deflate")
        corpus.raw(name, corpus.file(file, data), "image/tiff", why, status=400,
                   code="blank_image")  # fmt: skip


def _amplification_entries(
    corpus: Corpus, digits: np.ndarray, seven_paper: Image.Image, seven: int
) -> None:
    """Other formats' work amplification (issue 12, item 5): many strips and frames, huge
    ICC profiles and EXIF blocks. Each is decoded (or refused) at a bounded cost."""
    seven_png = encode(Image.fromarray(digits[SEVEN]), "PNG")
    seven_jpeg = encode(seven_paper.convert("L"), "JPEG")
    exif = _exif_with_entries(5_000)
    icc = b"ICC_PROFILE\x00\x01\x01" + bytes(65_533 - 16)
    frames = [Image.fromarray(digits[i]).convert("P") for i in range(SEVEN, SEVEN + 100)]
    webp_frames = [Image.fromarray(digits[i]).convert("RGB") for i in range(SEVEN, SEVEN + 250)]
    iccp = png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(bytes(48 * 2**20), 9))
    cases: list[tuple[str, str, bytes, str, dict[str, object], str]] = [
        ("tiff-10000-strips-blank", "10000-strips.tif", _tiff_with_strips(10_000),
         "image/tiff", {"status": 400, "code": "blank_image"},
         "a 16x10000 TIFF in 10,000 one-row strips that all point at the same 16 bytes"),
        ("gif-100-frames", "100-frames.gif",
         encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
         "image/gif", {"status": 200, "digit": seven},
         "an animated GIF of 100 MNIST digits: only the first frame is decoded"),
        ("webp-animated-250-frames", "250-frames.webp",
         encode(webp_frames[0], "WEBP", save_all=True, append_images=webp_frames[1:],
                lossless=True),
         "image/webp", {"status": 200, "digit": seven},
         "an animated lossless WebP of 250 frames: only the first frame is decoded"),
        ("png-iccp-48mib", "iccp-48mib.png", seven_png[:33] + iccp + seven_png[33:],
         "image/png", {"status": 400, "code": "not_an_image"},
         "an ICC profile that inflates to 48 MiB in 48 KB: Pillow stops inflating at 1 MB"),
        ("png-exif-5000-entries", "exif-5000-entries.png",
         seven_png[:33] + png_chunk(b"eXIf", exif) + seven_png[33:],
         "image/png", {"status": 200, "digit": seven},
         "a 60 KB EXIF block of 5,000 entries, parsed for the orientation"),
        ("jpeg-exif-5000-entries", "exif-5000-entries.jpg", with_exif_segment(seven_jpeg, exif),
         "image/jpeg", {"status": 200, "digit": seven},
         "a JPEG with a 60 KB EXIF segment of 5,000 entries"),
        ("jpeg-icc-64kb", "icc-64kb.jpg",
         seven_jpeg[:2] + b"\xff\xe2" + struct.pack(">H", len(icc) + 2) + icc + seven_jpeg[2:],
         "image/jpeg", {"status": 200, "digit": seven},
         "a JPEG carrying a 64 KB ICC profile (one APP2 segment, its most)"),
    ]  # fmt: skip
    for name, file, data, content_type, expect, why in cases:
        corpus.raw(name, corpus.file(file, data), content_type, why, **expect)


def _exif_with_entries(count: int) -> bytes:
    """A little-endian TIFF header and one IFD of `count` SHORT entries (no orientation)."""
    entries = b"".join(struct.pack("<HHII", 0x9000 + i % 3000, 3, 1, i) for i in range(count))
    return b"II*\x00" + struct.pack("<IH", 8, count) + entries + bytes(4)


def _tiff_with_strips(height: int, width: int = 16) -> bytes:
    """A white `width`x`height` grayscale TIFF of one-row strips sharing one row of data."""
    short = {258: 8, 259: 1, 262: 1, 277: 1}
    count = 9
    offsets_at = 8 + 2 + 12 * count + 4
    counts_at = offsets_at + 4 * height
    data_at = counts_at + 4 * height
    fields = {256: (4, 1, width), 257: (4, 1, height), 278: (4, 1, 1),
              273: (4, height, offsets_at), 279: (4, height, counts_at)}  # fmt: skip
    fields.update({tag: (3, 1, value) for tag, value in short.items()})
    ifd = struct.pack("<H", count) + b"".join(
        struct.pack("<HHIHH", tag, 3, 1, value, 0)
        if kind == 3
        else struct.pack("<HHII", tag, kind, n, value)
        for tag, (kind, n, value) in sorted(fields.items())
    )
    tables = struct.pack(f"<{height}I", *[data_at] * height)
    tables += struct.pack(f"<{height}I", *[width] * height)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(4) + tables + b"\xff" * width


def _with_comment_blocks(gif: bytes, count: int) -> bytes:
    """`gif` with `count` one-byte comment extensions before its first image."""
    first_frame = 13 + (3 << ((gif[10] & 0x07) + 1) if gif[10] & 0x80 else 0)
    assert gif[first_frame] == 0x2C, "the image descriptor follows the colour table"
    return gif[:first_frame] + b"\x21\xfe\x01#\x00" * count + gif[first_frame:]


def _progressive_page(side: int) -> bytes:
    """A white `side`-pixel square with a black bar, as a progressive grayscale JPEG."""
    page = np.full((side, side), 255, dtype=np.uint8)
    page[side // 3 : 2 * side // 3, side // 3 : side // 2] = 0
    return encode(Image.fromarray(page), "JPEG", progressive=True, quality=60)


def _with_empty_scans(jpeg: bytes, count: int) -> bytes:
    """`jpeg` with its last scan header repeated `count` times before EOI, with no data."""
    last = jpeg.rindex(b"\xff\xda")
    header = jpeg[last : last + 2 + int.from_bytes(jpeg[last + 2 : last + 4], "big")]
    return jpeg[:-2] + header * count + jpeg[-2:]


def _blank_entries(corpus: Corpus) -> None:
    """Images that decode but hold no digit."""
    nan_field = np.full((64, 64), np.nan, dtype=np.float32)
    cases: list[tuple[str, str, Image.Image, str, str]] = [
        ("blank-1x1-white", "white-1x1.png", Image.new("L", (1, 1), 255), "PNG",
         "a single white pixel"),
        ("blank-1x1-black", "black-1x1.png", Image.new("L", (1, 1), 0), "PNG",
         "a single black pixel"),
        ("blank-all-white", "white-300x200.png", Image.new("L", (300, 200), 255), "PNG",
         "a white page"),
        ("blank-all-black", "black-300x200.png", Image.new("L", (300, 200), 0), "PNG",
         "a black page"),
        ("blank-all-white-jpeg", "white-640x480.jpg", Image.new("RGB", (640, 480), "white"),
         "JPEG", "a white photo"),
        ("blank-transparent-canvas", "transparent-280x280.png",
         Image.new("RGBA", (280, 280), (0, 0, 0, 0)), "PNG",
         "a browser canvas with nothing drawn: transparent is paper"),
        ("blank-1x30000-line", "white-30000x1.png", Image.new("L", (30_000, 1), 255), "PNG",
         "an extreme aspect ratio, blank"),
        ("blank-float-tiff-all-nan", "nan-64x64.tif", Image.fromarray(nan_field, mode="F"),
         "TIFF", "a 32-bit float image whose every pixel is NaN"),
    ]  # fmt: skip
    for name, file, image, fmt, why in cases:
        corpus.raw(name, corpus.file(file, encode(image, fmt)), Image.MIME[fmt], why,
                   status=400, code="blank_image")  # fmt: skip


def _format_entries(
    corpus: Corpus, paper: Callable[[int], Image.Image], label: Callable[[int], int]
) -> None:
    """Valid images of real digits in every awkward pixel format and container: all 200."""
    gray16 = Image.fromarray(np.asarray(paper(TWO), dtype=np.uint16) * 257)
    la = paper(ONE).convert("LA")
    frames_gif = [paper(i).convert("P") for i in (ZERO, FOUR)]
    frames_tiff = [paper(i) for i in (THREE, NINE)]
    float_digit = np.asarray(paper(FIVE), dtype=np.float32)
    float_digit[:3, :3] = np.nan  # a few undefined pixels in a corner: read as paper
    bilevel = paper(SEVEN).point(lambda v: 255 if v > 128 else 0).convert("1")
    cases: list[tuple[str, str, bytes, str, int, str]] = [
        ("gray16-png", "digit-2-gray16.png", encode(gray16, "PNG"), "image/png", TWO,
         "16-bit grayscale (mode I;16)"),
        ("cmyk-jpeg", "digit-4-cmyk.jpg", encode(paper(FOUR).convert("CMYK"), "JPEG"),
         "image/jpeg", FOUR, "a CMYK JPEG, as print workflows save"),
        ("palette-png", "digit-0-palette.png", encode(paper(ZERO).convert("P"), "PNG"),
         "image/png", ZERO, "a palette (indexed colour) PNG"),
        ("la-png", "digit-1-la.png", encode(la, "PNG"), "image/png", ONE,
         "grayscale with an alpha channel (mode LA)"),
        ("bilevel-png", "digit-7-bilevel.png", encode(bilevel, "PNG"), "image/png", SEVEN,
         "1-bit black and white"),
        ("animated-gif", "digit-0-then-4.gif", encode(frames_gif[0], "GIF", save_all=True,
         append_images=frames_gif[1:], duration=100, loop=0), "image/gif", ZERO,
         "an animated GIF: the first frame (a 0) is read, not the second (a 4)"),
        ("multi-frame-tiff", "digit-3-then-9.tif", encode(frames_tiff[0], "TIFF",
         save_all=True, append_images=frames_tiff[1:]), "image/tiff", THREE,
         "a two-page TIFF: the first page (a 3) is read"),
        ("float-tiff-with-nan", "digit-5-float-nan.tif",
         encode(Image.fromarray(float_digit, mode="F"), "TIFF"), "image/tiff", FIVE,
         "a 32-bit float TIFF with NaN pixels in a corner: read as paper"),
        ("progressive-jpeg", "digit-9-progressive.jpg",
         encode(paper(NINE, 200), "JPEG", progressive=True, quality=80), "image/jpeg", NINE,
         "a progressive JPEG"),
        ("webp", "digit-3.webp", encode(paper(THREE), "WEBP", quality=80), "image/webp",
         THREE, "a lossy WebP"),
        ("bmp", "digit-6.bmp", encode(paper(SIX), "BMP"), "image/bmp", SIX, "a BMP"),
    ]  # fmt: skip
    for name, file, data, content_type, index, why in cases:
        corpus.raw(name, corpus.file(file, data), content_type, why, status=200,
                   digit=label(index))  # fmt: skip


def _exif_entries(
    corpus: Corpus, paper: Callable[[int], Image.Image], label: Callable[[int], int]
) -> None:
    """Phone photos stored rotated with an EXIF Orientation tag, and broken EXIF."""

    def stored(index: int, orientation: int, transpose: Image.Transpose | None) -> bytes:
        upright = paper(index, 240)
        pixels = upright.transpose(transpose) if transpose is not None else upright
        return with_exif_segment(encode(pixels, "JPEG", quality=90), orientation_ifd(orientation))

    cases: list[tuple[str, str, bytes, int, str]] = [
        ("exif-upside-down-six", "digit-6-exif-180.jpg",
         stored(SIX, 3, Image.Transpose.ROTATE_180), SIX,
         "a 6 stored upside down (Orientation 3): read as 6, not as 9"),
        ("exif-rotated-90", "digit-2-exif-90.jpg", stored(TWO, 6, Image.Transpose.ROTATE_90),
         TWO, "a 2 stored sideways (Orientation 6), as phones do"),
        ("exif-rotated-270", "digit-4-exif-270.jpg",
         stored(FOUR, 8, Image.Transpose.ROTATE_270), FOUR,
         "a 4 stored sideways the other way (Orientation 8)"),
        ("exif-invalid-orientation", "digit-7-exif-orientation-9.jpg", stored(SEVEN, 9, None),
         SEVEN, "Orientation 9 does not exist: ignored"),
        ("exif-garbage", "digit-1-exif-garbage.jpg",
         with_exif_segment(encode(paper(ONE, 240), "JPEG"), b"MM\x00*\x00\x00\x00\x08\xff\xff"),
         ONE, "an EXIF block whose directory is garbage: ignored"),
    ]  # fmt: skip
    for name, file, data, index, why in cases:
        corpus.raw(name, corpus.file(file, data), "image/jpeg", why, status=200,
                   digit=label(index))  # fmt: skip


def _query_entries(corpus: Corpus, seven_png: str, seven: int) -> None:
    """Query strings: unknown pins, malformed pins, very long ones."""
    long_label = corpus.file("long-label.query", b"label=" + b"a" * (QUERY_BYTES - 6))
    junk = "&".join(f"junk{n}=%00%FF{'x' * 8}" for n in range(QUERY_BYTES // 24))
    junk_params = corpus.file("junk-params.query", junk.encode())
    cases: list[tuple[str, str, int, str, str]] = [
        ("unknown-version", "version=999", 404, "unknown_model_version",
         "no model version 999"),
        ("unknown-label", "label=nonexistent", 404, "unknown_model_version",
         "no label of that name"),
        ("version-not-a-number", "version=seven", 400, "invalid_parameter",
         "version must be a whole number"),
        ("version-negative", "version=-1", 400, "invalid_parameter",
         "version must be positive"),
        ("version-huge", "version=" + "9" * 40, 400, "invalid_parameter",
         "a 40-digit version"),
        ("version-and-label", "version=1&label=stable", 400, "invalid_parameter",
         "pin a version or a label, not both"),
        ("label-non-ascii", "label=%E6%95%B0%E5%AD%97", 400, "invalid_parameter",
         "a label in Chinese characters"),
        ("label-with-nul", "label=stable%00", 400, "invalid_parameter",
         "a NUL byte in the label"),
        ("label-path-traversal", "label=..%2F..%2Fetc%2Fpasswd", 400, "invalid_parameter",
         "a label trying to escape the model server's URL path"),
        ("include-unknown", "include=everything", 400, "invalid_parameter",
         "an extra we do not offer"),
    ]  # fmt: skip
    for name, query, status, code, why in cases:
        corpus.raw(name, seven_png, "image/png", why, query=query, status=status, code=code)
    corpus.raw(
        "long-label-100kb",
        seven_png,
        "image/png",
        "?label= followed by 100 KB of 'a'",
        query_file=long_label,
        status=400,
        code="invalid_parameter",
    )
    corpus.raw(
        "junk-params-100kb",
        seven_png,
        "image/png",
        "100 KB of 4,000 unknown parameters with NUL and invalid UTF-8: ignored",
        query_file=junk_params,
        status=200,
        digit=seven,
    )
    corpus.get(
        "history-limit-huge",
        "/predictions",
        "a 12-digit history limit",
        query="limit=999999999999",
        status=400,
        code="invalid_parameter",
    )
    corpus.get(
        "prediction-id-sql-injection",
        "/predictions/1'%20OR%20'1'='1",
        "a prediction id that is SQL, not a UUID",
        status=404,
        code="unknown_prediction",
    )


def main() -> None:
    mnist = load_mnist()
    corpus = build(mnist.x_test, mnist.y_test)
    corpus.write()
    print(f"wrote {len(corpus.files)} files and {len(corpus.entries)} entries to {HERE}")


if __name__ == "__main__":
    main()
