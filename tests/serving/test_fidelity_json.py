"""TF Serving's JSON side: parsing, input conversion, output text, error wording.

Each test names the file and function of tensorflow/serving (2.20/2.21) whose
behaviour it mirrors; "tfs:" abbreviates tensorflow_serving/.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from serving_testlib import GOOD, MNIST, error_of, expected_digit, image, post

from serving import ModelServer, rjson, tensors
from serving.errors import ServingError
from serving.servable import Signature, TensorSpec


# -------------------------------------------------------------- input checks
def test_integers_that_fit_int32_wrap_into_uint8(served: ModelServer):
    """tfs:util/json_tensor.cc AddValueToTensor: DT_UINT8 takes any IsInt() value into
    int_val, and Tensor::FromProto casts it: 256 -> 0, -1 -> 255, 2**31-1 -> 255."""
    url = f"{MNIST}/versions/1:predict"
    for value, wrapped in ((256, 0), (-1, 255), (2**31 - 1, 255), (511, 255)):
        want = expected_digit(wrapped, "bucket")
        rows = post(served, url, {"instances": [[[value] * 28] * 28]})
        assert rows.status_code == 200, rows.text
        assert rows.json()["predictions"][0]["digit"] == want
        columns = post(served, url, {"inputs": [[[value] * 28] * 28]})
        assert columns.status_code == 200, columns.text
        assert columns.json()["outputs"]["digit"] == [want]
    response = post(served, url, {"instances": [[[2**31] * 28] * 28]})
    assert response.status_code == 400
    assert error_of(response) == (
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        "JSON Value: 2147483648 Type: Number is not of expected type: uint8"
    )


def test_no_input_shape_is_checked_the_graph_decides(served: ModelServer):
    """tfs:servables/tensorflow/predict_util.cc RunPredict feeds the tensors to
    Session::Run as they are: a [1,27,28] image runs (this graph averages any size), and a
    shape it cannot take fails in the graph, not in a signature check."""
    response = post(served, f"{MNIST}/versions/1:predict", {"instances": [[[255] * 28] * 27]})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["digit"] == 9
    response = post(served, f"{MNIST}/versions/1:predict", {"inputs": [[0] * 28] * 28})
    assert response.status_code == 400
    assert "reduction" in error_of(response)
    assert "has shape" not in error_of(response)


def test_empty_inputs_are_run(served: ModelServer):
    """tfs:util/json_tensor.cc FillTensorMapFromInputsMap: {"inputs": []} is a [0] tensor
    with no values, and it is run (only "instances" must not be empty): the graph's own
    error answers, here that it cannot average over axes 1 and 2 of a [0] tensor."""
    response = post(served, f"{MNIST}/versions/1:predict", {"inputs": []})
    assert response.status_code == 400
    assert "reduction" in error_of(response)
    assert "has shape" not in error_of(response)


FLOAT = TensorSpec(np.dtype(np.float32), "float", (None,))
INT32 = TensorSpec(np.dtype(np.int32), "int32", None)


def convert(body: bytes, spec: TensorSpec = FLOAT) -> dict[str, np.ndarray]:
    doc, _ = tensors.parse_body(body)
    signature = Signature("serving_default", {"default": spec}, {})
    return tensors.request_tensors(doc, signature)[1]


def test_float_inputs_take_any_number_and_round():
    """tfs:util/json_tensor_test.cc FloatTensorThatExceedsMaxReturnsInf,
    FloatTensorThatExceedsMinReturnsZero and MixedInputForFloatTensor: GetFloat() rounds."""
    big = convert(b'{"instances": [1.7976931348623157e308, -1.7976931348623157e308]}')["default"]
    assert big.tolist() == [np.inf, -np.inf]
    tiny = convert(b'{"instances": [2.2250738585072014e-308, -2.2250738585072014e-308]}')
    assert tiny["default"].tolist() == [0.0, -0.0]
    mixed = convert(b'{"instances": [1435774380, 2.5, 16777217]}')["default"]
    assert mixed.dtype == np.float32
    assert mixed.tolist() == [1435774336.0, 2.5, 16777216.0]


def test_instances_compare_the_size_before_the_shape():
    """tfs:util/json_tensor.cc AddInstanceItem and json_tensor_test.cc
    SingleUnnamedTensorErrors: "Expecting tensor size" before "Expecting shape"."""
    cases = [
        (b'{"instances": [[1,2],[3,4],[5,6,7]]}', "Expecting tensor size: 2 but got: 3"),
        (b'{"instances": [[1,2],[3,4],[[5,6]]]}', "Expecting shape [2] but got: [1,2]"),
        (b'{"instances": [1, [1]]}', "Expecting shape [] but got: [1]"),
    ]
    for body, message in cases:
        with pytest.raises(ServingError) as raised:
            convert(body, INT32)
        assert raised.value.message.endswith(message), raised.value.message


# ---------------------------------------------------------------- float text
def test_floats_are_written_with_six_digits_or_nine():
    """tfs:util/json_tensor.cc WriteDecimal and json_tensor_test.cc
    FromJsonSingleFloatTensorSixDigitPrecision / FromJsonSingleFloatTensorNonFinite."""
    values = np.array([[9000000, 999999, 0.5], [0.0003, 0.00003, 555557.5]], dtype=np.float32)
    body = tensors.render_response({"float_tensor": values}, tensors.ROW).decode()
    assert body == (
        '{\n    "predictions": [[9e+06, 999999.0, 0.5], [0.0003, 3e-05, 555557.5]\n    ]\n}'
    )
    special = np.array([[np.nan, np.inf], [3, -np.inf]], dtype=np.float32)
    body = tensors.render_response({"float_tensor": special}, tensors.ROW).decode()
    assert "[NaN, Infinity], [3.0, -Infinity]" in body


def test_float_outputs_over_http(served: ModelServer):
    """tfs:util/json_tensor.cc WriteDecimal (%.9g when six digits do not read back) and
    MakeRowFormatJsonFromTensors' PrettyWriter layout (one-line arrays per instance)."""
    body = {"signature_name": "mean_intensity", "instances": [image(0), image(1), image(255)]}
    response = post(served, f"{MNIST}/versions/1:predict", body)
    assert response.status_code == 200
    assert response.text == '{\n    "predictions": [0.0, 0.00392156886, 1.0\n    ]\n}'
    columnar = {"signature_name": "mean_intensity", "inputs": [image(1)]}
    response = post(served, f"{MNIST}/versions/1:predict", columnar)
    assert response.text == '{\n    "outputs": [\n        0.00392156886\n    ]\n}'


# -------------------------------------------------------------- error wording
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"instances": [1,', "JSON Parse error: Invalid value. at offset: 17"),
        (b"instances = [1, 2]", "JSON Parse error: Invalid value. at offset: 0"),
        (
            b'{"instances" [1]}',
            "JSON Parse error: Missing a colon after a name of object member. at offset: 13",
        ),
        (
            b'{"instances": [1 2]}',
            "JSON Parse error: Missing a comma or ']' after an array element. at offset: 17",
        ),
        (
            b'{"instances": [1]',
            "JSON Parse error: Missing a comma or '}' after an object member. at offset: 17",
        ),
        (
            b'{"instances": "\\x"}',
            "JSON Parse error: Invalid escape character in string. at offset: 15",
        ),
        (
            b'{"instances": [1e999]}',
            "JSON Parse error: Number too big to be stored in double. at offset: 15",
        ),
        (b"   ", "JSON Parse error: The document is empty. at offset: 3"),
        (b"", "JSON Parse error: The document is empty"),
    ],
)
def test_parse_errors_are_rapidjsons(served: ModelServer, body: bytes, message: str):
    """tfs:util/json_tensor.cc ParseJson: "JSON Parse error: " + rapidjson's
    GetParseError_En + " at offset: " + GetErrorOffset (an empty body is checked first)."""
    response = post(served, f"{MNIST}:predict", body)
    assert response.status_code == 400
    assert error_of(response) == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1, 2], "JSON Value: [1, 2] Is not object"),
        (
            {"instances": 0},
            "JSON Value: {\n    \"instances\": 0\n} Expecting 'instances' to be an list/array",
        ),
        (
            {"instances": []},
            "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array",
        ),
        (
            {"signature_name": 1, "instances": [1]},
            'JSON Value: {\n    "signature_name": 1,\n    "instances": [1]\n} not formatted '
            "correctly. 'signature_name' key must be a string value.",
        ),
        (
            {"instances": [[[1.5, "x"]]]},
            "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
            "JSON Value: 1.5 Type: Number is not of expected type: uint8",
        ),
        (
            {"instances": [image(0), [[0] * 28] * 27]},
            "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
            "Expecting tensor size: 784 but got: 756",
        ),
    ],
)
def test_error_wording_is_tf_servings(served: ModelServer, body: object, message: str):
    """tfs:util/json_tensor.cc FormatError/JsonValueToDebugString (rapidjson PrettyWriter with
    kFormatSingleLineArray: objects over lines, arrays on one), "Expecting 'instances'",
    and AddInstanceItem's size check before its shape check."""
    response = post(served, f"{MNIST}/versions/1:predict", body)
    assert response.status_code == 400
    assert error_of(response) == message


def test_error_body_is_written_by_prettywriter(served: ModelServer):
    """tfs:util/json_tensor.cc MakeJsonFromStatus: {"error": ...} through PrettyWriter."""
    response = post(served, "/v1/models/foo:predict", GOOD)
    assert response.content == b'{\n    "error": "Servable not found for request: Latest(foo)"\n}'


def test_debug_strings_stop_after_256_bytes():
    """tfs:util/json_tensor.cc JsonWriterWithLimit: no event is written once 256 bytes are."""
    text = rjson.debug_string({"instances": [list(range(200))]})
    assert len(text) < 256 + 8
    assert text.startswith('{\n    "instances": [[0, 1, 2, ')
    assert not text.endswith("]")


# ----------------------------------------------------------- trailing bytes
def test_bytes_after_the_root_value_are_ignored(served: ModelServer):
    """tfs:util/json_tensor.cc ParseJson uses kParseStopWhenDoneFlag (and
    json_tensor_test.cc TensorFromNonNullTerminatedBuffer): parsing ends with the root."""
    body = json.dumps({"instances": [image(255)]}).encode() + b"}} trailing garbage"
    response = post(served, f"{MNIST}/versions/1:predict", body)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["digit"] == 9


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[1, 2, 3]]}',
        b'{"instances": [' + b"1" * 19 + b"]}",
        b'{"instances": [' + b"9" * 20 + b"]}",
        b'{"instances": [1e308, 2E+309, 3e-400, 4.5E-1000]}',
        b'{"instances": [1e30, 2E+30, 3e-40]}',
        b'{"instances": ["\\ud83d\\ude00", "\\u00e9"]}',
        b'{"instances": ["\\u00e9", 12345678901234567890123]}',
        b'{"instances": ["\\n"], "x": 1e-999}',
    ],
)
def test_the_exact_reader_prefilter_agrees_with_its_regex(body):
    """rjson's substring prefilter decides exactly as the regex it stands in for."""
    assert rjson._needs_exact(body) == (rjson._NEEDS_EXACT.search(body) is not None)
