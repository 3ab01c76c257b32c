"""Read the images out of a `POST /predict` request, in any of the accepted body forms.

Raw image bytes (`image/*` or `application/octet-stream`), `multipart/form-data` with
one or more file fields named `image`, or JSON `{"image": b64}` / `{"images": [b64...]}`
(a `data:` URL, as a browser canvas gives, is accepted as base64 too).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TypeVar

import flask
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import LimitedStream

FIELD = "image"
T = TypeVar("T")


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


class TooManyImages(RequestError):
    """More images in one request than allowed."""


def read_images(request: flask.Request, max_images: int) -> list[bytes]:
    """The image files in the request body, in request order.

    Images are counted before any is read out of its part or base64, so an oversized
    batch costs no more than its (already size-limited) body.
    """
    mimetype = request.mimetype
    if mimetype.startswith("image/") or mimetype == "application/octet-stream":
        images = [_body(request)]
    elif mimetype == "multipart/form-data":
        files = _check_count(_from_multipart(request), max_images)
        images = [file.read() for file in files]
    elif mimetype == "application/json" or mimetype.endswith("+json"):
        encoded = _check_count(_from_json(_body(request)), max_images)
        images = [_decode_base64(value, position) for position, value in enumerate(encoded)]
    elif not mimetype:
        raise UnsupportedMediaType(
            "the request has no Content-Type: send image/*, multipart/form-data or application/json"
        )
    else:
        raise UnsupportedMediaType(
            f"Content-Type {mimetype!r} is not accepted: "
            "send image/*, multipart/form-data or application/json"
        )
    for position, image in enumerate(images):
        if not image:
            where = f"image {position + 1}" if len(images) > 1 else "the image"
            raise EmptyBody(f"{where} is empty")
    return images


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


def _from_multipart(request: flask.Request) -> list[FileStorage]:
    files = request.files.getlist(FIELD)
    if not files:
        named = sorted(set(request.files) | set(request.form))
        got = f"; the request has {', '.join(map(repr, named))}" if named else ""
        raise MissingImage(f"no file field named {FIELD!r}{got}")
    return files


def _from_json(body: bytes) -> list[object]:
    """The JSON body's images, still base64-encoded."""
    if not body:
        raise EmptyBody("the request body is empty")
    try:
        document = json.loads(body)
    except ValueError:  # UnicodeDecodeError included: the body is not UTF-8
        raise InvalidJson("the request body is not valid JSON") from None
    except RecursionError:  # thousands of nested arrays or objects
        raise InvalidJson("the JSON body is nested too deeply") from None
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
        # Line breaks are common (the `base64` tool wraps lines) and harmless.
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidBase64(f"image {position + 1} is not valid base64") from None
