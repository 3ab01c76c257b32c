"""Read the images out of a `POST /predict` request, in any of the accepted body forms.

Raw image bytes (`image/*` or `application/octet-stream`), `multipart/form-data` with
one or more file fields named `image`, or JSON `{"image": b64}` / `{"images": [b64...]}`
(a `data:` URL, as a browser canvas gives, is accepted as base64 too).
"""

from __future__ import annotations

import base64
import binascii
from typing import TypeVar

import flask
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData
from werkzeug.wsgi import LimitedStream

from recognizer import bounded_json

FIELD = "image"
T = TypeVar("T")
# Multipart limits of our own, each with its own error. Werkzeug's (1,000 parts, 500 KB of
# text) answer a bare "exceeds the capacity limit", and it spools file parts over 500 KB to
# the temp directory, which fails when that disk is full. Parts are read here instead,
# straight into memory: the body is already capped by MAX_REQUEST_BYTES.
MAX_FORM_PARTS = 1_000  # parts of any kind; the images among them are MAX_BATCH_IMAGES
MAX_FORM_FIELD_BYTES = 64 * 1024  # one text (non-file) part; we read none of them
READ_CHUNK_BYTES = 64 * 1024
ECHO_CHARS = 40  # a value from the request quoted in a message is cut to this
BODY_COPIES = 2  # body_cost: a raw or multipart body, and the image bytes out of it
JSON_BODY_COPIES = 5  # the body, its str, the ASCII copy, the compacted copy, the image
# Base64's whitespace, deleted in C: split() and join() on a value with a space every two
# characters made five million strings (+285 MiB for a 10 MiB body).
BASE64_WHITESPACE = b" \t\n\r\v\f"


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """`value` quoted for a message, cut short: a client's 20 KB id is not sent back whole."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


class RequestError(ValueError):
    """The request does not carry images in an accepted form."""


class EmptyBody(RequestError):
    """No bytes where an image was expected."""


class MissingImage(RequestError):
    """The body has the right form but no image in it."""


class InvalidBase64(RequestError):
    """A JSON image is not valid base64."""


class InvalidJson(RequestError):
    """The JSON body does not parse, or has the wrong shape."""


class UnsupportedMediaType(RequestError):
    """The Content-Type is missing or not one we read."""


class JsonTooComplex(InvalidJson):
    """A JSON body with more structure than any body of ours has (bounded_json)."""


class TooManyImages(RequestError):
    """More images in one request than allowed."""


class TooManyFormParts(RequestError):
    """A multipart body with more parts than MAX_FORM_PARTS."""


class FormFieldTooLarge(RequestError):
    """A multipart text field longer than MAX_FORM_FIELD_BYTES."""


def read_images(request: flask.Request, max_images: int) -> list[bytes]:
    """The image files in the request body, in request order.

    Images are counted before any is read out of its part or base64, so an oversized
    batch costs no more than its (already size-limited) body.
    """
    mimetype = request.mimetype
    if mimetype.startswith("image/") or mimetype == "application/octet-stream":
        images = [_body(request)]
    elif mimetype == "multipart/form-data":
        images = _from_multipart(request, max_images)
    elif mimetype == "application/json" or mimetype.endswith("+json"):
        encoded = _check_count(_from_json(_body(request), max_images), max_images)
        images = [_decode_base64(value, position) for position, value in enumerate(encoded)]
    elif not mimetype:
        raise UnsupportedMediaType(
            "the request has no Content-Type: send image/*, multipart/form-data or application/json"
        )
    else:
        raise UnsupportedMediaType(
            f"Content-Type {echo(mimetype)} is not accepted: "
            "send image/*, multipart/form-data or application/json"
        )
    for position, image in enumerate(images):
        if not image:
            where = f"image {position + 1}" if len(images) > 1 else "the image"
            raise EmptyBody(f"{where} is empty")
    return images


def body_cost(request: flask.Request, max_bytes: int) -> int:
    """The memory reading and parsing this request's body takes at its peak, from its
    declared length (the limit, for a chunked body): reserved before the first byte.

    Raw and multipart bodies are held twice (the stream's buffer and the image); a JSON
    body about five times: the bytes, the parsed string, its ASCII copy without whitespace
    and the decoded image.
    """
    size = declared_bytes(request, max_bytes)
    is_json = request.mimetype == "application/json" or request.mimetype.endswith("+json")
    return size * (JSON_BODY_COPIES if is_json else BODY_COPIES)


def declared_bytes(request: flask.Request, max_bytes: int) -> int:
    """The body's size as its Content-Length says, the limit for a chunked body."""
    declared = request.content_length
    return max_bytes if declared is None else min(declared, max_bytes)


def read_small_body(request: flask.Request, limit: int) -> bytes:
    """A body that is small by contract (a correction): refused from its Content-Length
    before a byte is read, or once more than `limit` bytes of a chunked one have been."""
    if (request.content_length or 0) > limit:
        raise RequestEntityTooLarge(
            f"the request body is {request.content_length:,} bytes; the limit is {limit:,}"
        )
    data = b""
    while len(data) <= limit:
        chunk = request.stream.read(limit + 1 - len(data))
        if not chunk:
            return data
        data += chunk
    raise RequestEntityTooLarge(f"the request body is over the limit of {limit:,} bytes")


def _check_count(items: list[T], max_images: int) -> list[T]:
    if len(items) > max_images:
        raise TooManyImages(f"{len(items)} images in one request; the limit is {max_images}")
    return items


def _body(request: flask.Request) -> bytes:
    """The whole body; a chunked one (no Content-Length) that reached the limit is refused.

    Werkzeug stops reading a chunked body at `max_content_length` without saying so, and
    what was read would be taken for the whole upload: a truncated image, cut-off JSON.
    (Multipart bodies need no check: Werkzeug's form parser raises by itself.)
    """
    data = request.get_data(cache=False)
    stream = request.stream
    if request.content_length is None and isinstance(stream, LimitedStream) and stream.is_exhausted:
        raise RequestEntityTooLarge(f"the request body is over the limit of {stream.limit:,} bytes")
    return data


def _from_multipart(request: flask.Request, max_images: int) -> list[bytes]:
    """The file parts named `image`, read into memory; images are counted as they come."""
    boundary = request.mimetype_params.get("boundary", "")
    if not boundary or not boundary.isascii():
        raise MissingImage("the multipart body has no boundary, so it holds no fields")
    decoder = MultipartDecoder(boundary.encode("ascii"))
    images: list[bytearray] = []
    names: set[str] = set()
    parts = 0
    current: bytearray | None = None  # the image being read, if the part is one
    text_bytes: int | None = None  # the size so far of the text part being read, if one is
    stream = request.stream
    while True:
        try:
            data = stream.read(READ_CHUNK_BYTES)
        except RequestEntityTooLarge:  # a chunked body past max_content_length
            limit = request.max_content_length or 0
            raise RequestEntityTooLarge(
                f"the request body is over the limit of {limit:,} bytes"
            ) from None
        try:
            decoder.receive_data(data or None)
            event = decoder.next_event()
            while not isinstance(event, (Epilogue, NeedData)):
                if isinstance(event, (Field, File)):
                    parts += 1
                    if parts > MAX_FORM_PARTS:
                        raise TooManyFormParts(
                            f"the multipart body has more than {MAX_FORM_PARTS:,} parts"
                        )
                    names.add(event.name)
                    current, text_bytes = None, None
                    if isinstance(event, Field):
                        text_bytes = 0
                    elif event.name == FIELD:
                        current = bytearray()
                        images.append(current)
                        _check_count(images, max_images)
                elif isinstance(event, Data):
                    if current is not None:
                        current += event.data
                    elif text_bytes is not None:
                        text_bytes += len(event.data)
                        if text_bytes > MAX_FORM_FIELD_BYTES:
                            raise FormFieldTooLarge(
                                f"a text field of the multipart body is over "
                                f"{MAX_FORM_FIELD_BYTES:,} bytes; send images as file fields"
                            )
                event = decoder.next_event()
        except ValueError as error:
            if isinstance(error, RequestError):
                raise
            raise MissingImage("the multipart body is malformed: no image could be read") from None
        if not data or isinstance(event, Epilogue):
            break
    if not images:
        shown = sorted(names)[:5]
        got = f"; the request has {', '.join(echo(name) for name in shown)}" if names else ""
        more = f" and {len(names) - len(shown):,} more" if len(names) > len(shown) else ""
        raise MissingImage(f"no file field named {FIELD!r}{got}{more}")
    return [bytes(image) for image in images]


def json_values_budget(max_images: int) -> int:
    """Structural characters a JSON body of `max_images` images may have: per image a comma,
    a data: URL's comma and colon, and an object's braces; some slack for other members."""
    return 4 * max_images + 32


def _from_json(body: bytes, max_images: int) -> list[object]:
    """The JSON body's images, still base64-encoded."""
    if not body:
        raise EmptyBody("the request body is empty")
    try:
        document = bounded_json.loads(body, len(body), json_values_budget(max_images))
    except bounded_json.JsonTooComplex as error:
        raise JsonTooComplex(str(error)) from None
    except bounded_json.InvalidJson:
        raise InvalidJson("the request body is not valid JSON") from None
    if not isinstance(document, dict):
        raise InvalidJson('the JSON body must be an object: {"image": "<base64>"}')
    if FIELD in document:
        encoded = [document[FIELD]]
    elif "images" in document:
        encoded = document["images"]
        if not isinstance(encoded, list):
            raise InvalidJson('"images" must be a list of base64 strings')
        if not encoded:
            raise MissingImage('"images" is an empty list: send at least one base64 image')
    else:
        raise MissingImage('the JSON body has neither "image" nor "images"')
    return encoded


def _decode_base64(value: object, position: int) -> bytes:
    if not isinstance(value, str):
        raise InvalidJson(f"image {position + 1} must be a base64 string")
    if value.startswith("data:"):
        _, _, value = value.partition(",")
    try:
        # Line breaks are common (the `base64` tool wraps lines) and harmless. Anything
        # else that is not ASCII fails the encode, as it would fail base64.
        compact = value.encode("ascii").translate(None, BASE64_WHITESPACE)
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):  # UnicodeEncodeError included
        raise InvalidBase64(f"image {position + 1} is not valid base64") from None
