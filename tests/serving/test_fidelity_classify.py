"""TF Serving's :classify and :regress over REST.

Each test names the file and function of tensorflow/serving (2.20/2.21) whose
behaviour it mirrors; "tfs:" abbreviates tensorflow_serving/.
"""

from __future__ import annotations

import pytest
from serving_testlib import MNIST, Deployment, error_of, post

from serving import ModelServer

# -------------------------------------------------------- classify / regress
CLASSIFY_BODY = {"examples": [{"x": 1.5}]}


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        (
            f"{MNIST}:classify",
            CLASSIFY_BODY,
            400,
            'No classification inputs found in SignatureDef: inputs {\n  key: "image"',
        ),
        (
            f"{MNIST}/versions/1:classify",
            {"signature_name": "mean_intensity", **CLASSIFY_BODY},
            400,
            "No classification inputs found in SignatureDef",
        ),
        (f"{MNIST}:regress", CLASSIFY_BODY, 400, "Expected one output Tensor."),
        (
            f"{MNIST}:regress",
            {"signature_name": "mean_intensity", **CLASSIFY_BODY},
            400,
            'No regression inputs found in SignatureDef: inputs {\n  key: "image"',
        ),
        (
            f"{MNIST}:classify",
            {"signature_name": "nope", **CLASSIFY_BODY},
            400,
            "No signature was found with the name: nope",
        ),
        (
            "/v1/models/foo:classify",
            CLASSIFY_BODY,
            404,
            "Servable not found for request: Latest(foo)",
        ),
        (
            "/v1/models/foo:regress",
            CLASSIFY_BODY,
            404,
            "Servable not found for request: Latest(foo)",
        ),
        (
            f"{MNIST}/labels/nope:classify",
            CLASSIFY_BODY,
            400,
            "Unrecognized servable version label",
        ),
        # The body is read before the model is looked up: a bad body is 400 for any model.
        (
            "/v1/models/foo:classify",
            {"examples": []},
            400,
            "JSON Value: {\n    \"examples\": []\n} 'examples' value is an empty array",
        ),
        (
            f"{MNIST}:regress",
            {"instances": []},
            400,
            "When method is classify, key 'examples' is expected and was not found",
        ),
        (
            f"{MNIST}:classify",
            {"examples": {}},
            400,
            "Expecting 'examples' value to be an list/array",
        ),
        (
            f"{MNIST}:classify",
            {"examples": [1]},
            400,
            "Example must be JSON object but got JSON Number",
        ),
        (
            f"{MNIST}:classify",
            {"examples": [{"x": [1, "a"]}]},
            400,
            "Unexpected element type in feature: x expecting type: int64",
        ),
        (
            f"{MNIST}:classify",
            {"examples": [{"x": None}]},
            400,
            "Feature: x has element with unexpected JSON type: Null",
        ),
    ],
)
def test_classify_and_regress_fail_on_a_predict_signature_as_tf_serving_does(
    served: ModelServer, path: str, body: object, status: int, message: str
):
    """tfs:servables/tensorflow/classifier.cc GetClassificationSignatureDef and
    PreProcessClassification, regressor.cc PreProcessRegression (the method-name check is
    off by default, so the signature's shape decides), util/json_tensor.cc
    FillClassifyRegressRequestFromJson and MakeExampleFromJsonObject,
    model_servers/http_rest_api_handler.cc ProcessClassifyRequest (body before model)."""
    response = post(served, path, body)
    assert response.status_code == status, response.text
    assert message in error_of(response)


def test_classify_with_the_method_name_check(deployment: Deployment, start_server):
    """tfs:servables/tensorflow/classifier.cc: with --enable_signature_method_name_check
    the method name is checked instead of the signature's shape."""
    deployment.add_version(1, "bucket")
    deployment.write_config(policy="specific { versions: 1 }")
    server = start_server(deployment, enable_signature_method_name_check=True)
    response = post(server, f"{MNIST}:classify", CLASSIFY_BODY)
    assert response.status_code == 400
    assert error_of(response) == (
        "Expected classification signature method_name to be tensorflow/serving/classify. "
        "Was: tensorflow/serving/predict"
    )


def test_classify_and_regress_signatures_answer(deployment: Deployment, start_server):
    """tfs:servables/tensorflow/util.cc InputToSerializedExampleTensor (context bytes then
    example bytes), classifier.cc PostProcessClassificationResult, regressor.cc
    PostProcessRegressionResult, util/json_tensor.cc MakeJsonFromClassificationResult and
    MakeJsonFromRegressionResult (WriteDecimal scores, one-line result arrays)."""
    deployment.add_version(1, "examples")
    deployment.write_config(policy="specific { versions: 1 }")
    server = start_server(deployment)
    body = {"examples": [{"x": 0.25}, {"x": 1.0}], "context": {"y": 2.0}}
    response = post(server, f"{MNIST}:classify", body)
    assert response.status_code == 200, response.text
    assert response.text == (
        '{\n    "results": [[["low", 0.75], ["high", 0.25]], '
        '[["low", 0.0], ["high", 1.0]]\n    ]\n}'
    )
    response = post(server, f"{MNIST}:regress", {**body, "signature_name": "regress"})
    assert response.status_code == 200, response.text
    assert response.text == '{\n    "results": [0.5, 2.0]\n}'  # x * y, the context's y
