"""The dev model server's fast read of the function's :predict body (tensors.parse_predict_body).

It must give exactly what the JSON path gives for every body, the function's own and
any near miss, or fall back to it: each case is converted both ways and compared (the
arrays, their dtype and shape, or the error's wording).
"""

from __future__ import annotations

import numpy as np
import pytest

from recognizer.model_client import predict_body
from serving import tensors
from serving.errors import ServingError
from serving.servable import Signature, TensorSpec

UINT8 = TensorSpec(np.dtype(np.uint8), "uint8", (None, 28, 28))
FLOAT = TensorSpec(np.dtype(np.float32), "float", None)
STRING = TensorSpec(np.dtype(object), "string", None)
PIXELS = np.random.default_rng(28).integers(0, 256, size=(64, 28, 28), dtype=np.uint8)


def both_ways(body: bytes, spec: TensorSpec = UINT8) -> tuple[object, object]:
    """What the JSON path and the fast path make of `body`: arrays, or an error's text."""
    results = []
    for parse in (tensors.parse_body, tensors.parse_predict_body):
        try:
            doc, name = parse(body)
            signature = Signature(name or "serving_default", {"image": spec}, {})
            fmt, arrays = tensors.request_tensors(doc, signature)
            results.append(
                (name, fmt, {k: (v.dtype, v.shape, v.tolist()) for k, v in arrays.items()})
            )
        except ServingError as error:
            results.append(("error", error.code, error.message))
    return results[0], results[1]


CASES = {
    "64 images": predict_body(PIXELS),
    "one image": predict_body(PIXELS[:1]),
    "zeros and 255s": predict_body(np.where(PIXELS > 127, 255, 0).astype(np.uint8)),
    "a flat list": b'{"signature_name":"serving_default","inputs":{"image":[1,2,3]}}',
    "four levels": b'{"signature_name":"s","inputs":{"image":[[[[1,2],[3,4]]],[[[5,6],[7,8]]]]}}',
    "ragged": b'{"signature_name":"s","inputs":{"image":[[1,2],[3]]}}',
    "ragged deeper": b'{"signature_name":"s","inputs":{"image":[[[1],[2]],[[3]]]}}',
    "past uint8": b'{"signature_name":"s","inputs":{"image":[[256,1000,7]]}}',
    "leading zero": b'{"signature_name":"s","inputs":{"image":[[007,1]]}}',
    "a space": b'{"signature_name":"s","inputs":{"image":[[1, 2]]}}',
    "an empty list": b'{"signature_name":"s","inputs":{"image":[[],[]]}}',
    "empty": b'{"signature_name":"s","inputs":{"image":[]}}',
    "trailing bytes": predict_body(PIXELS[:2]) + b" garbage",
    "unclosed": b'{"signature_name":"s","inputs":{"image":[[1,2]}}',
    "a double comma": b'{"signature_name":"s","inputs":{"image":[[1,,2]]}}',
    "a trailing comma": b'{"signature_name":"s","inputs":{"image":[[1,2,]]}}',
    "no signature": b'{"signature_name":"","inputs":{"image":[[1,2]]}}',
    "another input name": b'{"signature_name":"s","inputs":{"pixels":[[1,2]]}}',
    "a true in the name": b'{"signature_name":"true","inputs":{"image":[[1,2]]}}',
}


@pytest.mark.parametrize("body", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("spec", [UINT8, FLOAT, STRING], ids=["uint8", "float", "string"])
def test_the_fast_read_is_the_json_read(body: bytes, spec: TensorSpec):
    json_way, fast_way = both_ways(body, spec)
    assert fast_way == json_way


def test_the_function_s_body_takes_the_fast_path():
    # Not a timing: that the fast path is taken at all is what makes it faster.
    doc, name = tensors.parse_predict_body(predict_body(PIXELS))
    assert name == "serving_default"
    assert isinstance(doc["inputs"]["image"], np.ndarray)
    assert np.array_equal(doc["inputs"]["image"], PIXELS)
