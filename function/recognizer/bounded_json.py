"""JSON from a client, parsed only once its size and structure are known to be cheap.

`json.loads` allocates a Python object for every value: 10 MiB of `[{},{},...]` is a
million dicts (over 100 MiB) and 200,000 nested arrays a RecursionError. Our bodies have
a handful of values (an image or a list of them; a digit and a token), so the structural
characters are counted first, in C, and a body with more than its budget is refused before
a single object exists. Characters inside strings are counted too: base64 has none of
them, so the only cost is a conservative count for exotic strings.
"""

from __future__ import annotations

import json

STRUCTURE = (b"{", b"[", b",", b":")


class JsonTooLarge(ValueError):
    """The JSON body is over its size budget."""


class JsonTooComplex(ValueError):
    """The JSON body has more structure than its budget: not one of the shapes we read."""


class InvalidJson(ValueError):
    """The body is not JSON."""


def loads(body: bytes, max_bytes: int, max_values: int) -> object:
    """`body` parsed, if it has at most `max_bytes` and `max_values` structural characters.

    A structural budget bounds the nesting depth too (each level costs one `[` or `{`),
    so no RecursionError can happen below Python's default limit of 1,000.
    """
    if len(body) > max_bytes:
        raise JsonTooLarge(f"the JSON body is {len(body):,} bytes; the limit is {max_bytes:,}")
    values = sum(body.count(character) for character in STRUCTURE)
    if values > max_values:
        raise JsonTooComplex(
            f"the JSON body has more than {max_values:,} objects, lists or members: "
            "it is not one of the shapes this API reads"
        )
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError included: not UTF-8
        raise InvalidJson("the body is not valid JSON") from None
