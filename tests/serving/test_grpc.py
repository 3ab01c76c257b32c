"""The gRPC API (--port) with real gRPC clients: tensorflow-serving-api's generated stubs.

Each test names the file and function of tensorflow/serving (2.20/2.21) whose behaviour
it mirrors; "tfs:" abbreviates tensorflow_serving/.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from serving_testlib import Deployment, expected_digit, model_config, version_states, wait_for
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from infra.rollout import cli
from infra.rollout.push import push_config
from serving import ModelServer


@pytest.fixture(scope="module")
def grpc_served(tmp_path_factory: pytest.TempPathFactory, model_store) -> Iterator[ModelServer]:
    """Versions 1 (bucket) and 2 (flipped), stable -> 1; REST and gRPC on free ports."""
    deployment = Deployment(tmp_path_factory.mktemp("grpc"), model_store)
    deployment.add_version(1, "bucket")
    deployment.add_version(2, "flipped")
    deployment.write_config(labels={"stable": 1})
    options = deployment.server_options(port=0, allow_version_labels_for_unavailable_models=True)
    with ModelServer(**options) as server:
        yield server


@pytest.fixture(scope="module")
def channel(grpc_served: ModelServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(grpc_served.grpc_address) as channel:
        yield channel


@pytest.fixture
def predictions(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture
def models(channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


def predict_request(
    value: int = 255, *, version: int | None = None, label: str | None = None, **spec: object
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mnist"
    for key, item in spec.items():
        setattr(request.model_spec, key, item)
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    images = np.full((2, 28, 28), value, dtype=np.uint8)
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(images))
    return request


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=10)
    return raised.value


# ------------------------------------------------------------------ Predict
def test_predict_answers_as_proto_fields_with_the_resolved_spec(predictions):
    """tfs:servables/tensorflow/predict_util.cc RunPredict: MakeModelSpec fills the
    signature name and version; outputs are Tensor::AsProtoField (float_val, int64_val)."""
    response = predictions.Predict(predict_request(255, label="stable"), timeout=10)
    assert response.model_spec.name == "mnist"
    assert response.model_spec.signature_name == "serving_default"
    assert response.model_spec.version.value == 1
    digit = response.outputs["digit"]
    assert digit.dtype == types_pb2.DT_INT64
    assert list(digit.int64_val) == [expected_digit(255, "bucket")] * 2
    assert not digit.tensor_content
    probabilities = response.outputs["probabilities"]
    assert [d.size for d in probabilities.tensor_shape.dim] == [2, 10]
    assert len(probabilities.float_val) == 20
    latest = predictions.Predict(predict_request(255), timeout=10)
    assert latest.model_spec.version.value == 2
    assert list(latest.outputs["digit"].int64_val) == [expected_digit(255, "flipped")] * 2


def test_predict_reads_values_as_tensor_fromproto_does(predictions):
    """tensorflow Tensor::FromProto (FromProtoField), as GetInputValues calls it: fewer
    values than the shape holds repeat the last one; int_val is cast to uint8 (wraps)."""
    request = predict_request(version=1)
    image = request.inputs["image"]
    image.ClearField("tensor_content")
    image.int_val.extend([0, 511])  # 511 wraps to 255, and repeats to fill [2,28,28]
    response = predictions.Predict(request, timeout=10)
    assert list(response.outputs["digit"].int64_val) == [expected_digit(255, "bucket")] * 2


def test_output_filter(predictions):
    """tfs:servables/tensorflow/predict_util.cc PreProcessPrediction: output_filter."""
    request = predict_request(version=1)
    request.output_filter.append("digit")
    assert set(predictions.Predict(request, timeout=10).outputs) == {"digit"}
    request.output_filter.append("digit")
    error = rpc_error(predictions.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "duplicate output tensor alias: digit"
    request.ClearField("output_filter")
    request.output_filter.append("nope")
    error = rpc_error(predictions.Predict, request)
    assert error.details() == (
        "output tensor alias not found in signature: nope Outputs expected to be in the set "
        "{digit,probabilities}."
    )


def _without_spec() -> predict_pb2.PredictRequest:
    request = predict_request()
    request.ClearField("model_spec")
    return request


def _bad_content() -> predict_pb2.PredictRequest:
    request = predict_request()
    request.inputs["image"].tensor_content = b"\x00" * 5
    return request


def _renamed() -> predict_pb2.PredictRequest:
    request = predict_request()
    request.inputs["img"].CopyFrom(request.inputs["image"])
    del request.inputs["image"]
    return request


def _two_inputs() -> predict_pb2.PredictRequest:
    request = predict_request()
    request.inputs["extra"].CopyFrom(request.inputs["image"])
    return request


def _floats() -> predict_pb2.PredictRequest:
    request = predict_request()
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 28, 28), np.float32)))
    return request


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (_without_spec(), grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
        (
            predict_request(name="foo"),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(foo)",
        ),
        (predict_request(name=""), grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name"),
        (
            predict_request(version=9),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Specific(mnist, 9)",
        ),
        (
            predict_request(label="nope"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label: nope",
        ),
        (
            predict_request(signature_name="nope"),
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "nope" not found.',
        ),
        (_bad_content(), grpc.StatusCode.INVALID_ARGUMENT, "tensor parsing error: image"),
        (
            _renamed(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Signature input alias: image(feed name: serving_default_image:0) not found in "
            "request and no default value provided",
        ),
        (
            _two_inputs(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input size does not match signature: 2!=1 len({extra,image}) != len({image}). "
            "Sent extra: {extra}. Missing but required: {}.",
        ),
        (
            _floats(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Expects arg[0] to be uint8 but float is provided",
        ),
    ],
)
def test_predict_errors_carry_tf_servings_codes(predictions, request_, code, message):
    """tfs:model_servers/prediction_service_impl.cc Predict + grpc_status_util.cc
    ToGRPCStatus (the TF code as the gRPC code); predict_impl.cc "Missing ModelSpec";
    server_core.cc ServableRequestFromModelSpec / GetModelVersionForLabel; predict_util.cc
    RunPredict, VerifyRequestInputsSize; saved_model util.cc GetInputValues."""
    error = rpc_error(predictions.Predict, request_)
    assert error.code() == code
    assert message in error.details()


# ---------------------------------------------------- Classify / Regress
def _examples(kind):
    request = kind()
    request.model_spec.name = "mnist"
    example = request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(0.25)
    return request


def test_classify_and_regress_on_a_predict_signature(predictions):
    """tfs:servables/tensorflow/classifier.cc PreProcessClassification and regressor.cc
    PreProcessRegression fail with INVALID_ARGUMENT on the MNIST predict signature."""
    error = rpc_error(predictions.Classify, _examples(classification_pb2.ClassificationRequest))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("No classification inputs found in SignatureDef: ")
    error = rpc_error(predictions.Regress, _examples(regression_pb2.RegressionRequest))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Expected one output Tensor."
    empty = classification_pb2.ClassificationRequest()
    empty.model_spec.name = "foo"
    assert rpc_error(predictions.Classify, empty).code() == grpc.StatusCode.NOT_FOUND


def test_classify_and_regress_signatures_over_grpc(deployment: Deployment, start_server):
    """tfs:servables/tensorflow/util.cc InputToSerializedExampleTensor ("Input is empty."
    without examples), classifier.cc / regressor.cc post-processing, and
    util.cc MakeModelSpec (the default signature name filled in)."""
    deployment.add_version(1, "examples")
    deployment.write_config(policy="specific { versions: 1 }")
    server = start_server(deployment, port=0)
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Classify(_examples(classification_pb2.ClassificationRequest), timeout=10)
        assert response.model_spec.signature_name == "serving_default"
        classes = response.result.classifications[0].classes
        assert [(c.label, round(c.score, 6)) for c in classes] == [("low", 0.75), ("high", 0.25)]
        request = _examples(regression_pb2.RegressionRequest)
        request.model_spec.signature_name = "regress"
        example = example_pb2.Example()
        example.CopyFrom(request.input.example_list.examples[0])
        context = request.input.example_list_with_context  # the oneof drops example_list
        context.examples.add().CopyFrom(example)
        context.context.CopyFrom(
            text_format.Parse(
                'features { feature { key: "y" value { float_list { value: 4 } } } }',
                example_pb2.Example(),
            )
        )
        response = stub.Regress(request, timeout=10)
        assert [r.value for r in response.result.regressions] == [1.0]
        request.input.ClearField("example_list_with_context")
        error = rpc_error(stub.Regress, request)
        assert (error.code(), error.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "Input is empty.",
        )


# ---------------------------------------------------------- Metadata / Status
def test_get_model_metadata(predictions):
    """tfs:servables/tensorflow/get_model_metadata_impl.cc: the signature_def field only,
    packed as a SignatureDefMap; the spec holds the name and resolved version."""
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "mnist"
    request.model_spec.version_label = "stable"
    response = predictions.GetModelMetadata(request, timeout=10)
    assert (response.model_spec.name, response.model_spec.version.value) == ("mnist", 1)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    assert {"serving_default", "mean_intensity"} <= set(signatures.signature_def)
    del request.metadata_field[:]
    error = rpc_error(predictions.GetModelMetadata, request)
    assert error.details() == "GetModelMetadataRequest must specify at least one metadata_field"
    request.metadata_field.append("graph")
    error = rpc_error(predictions.GetModelMetadata, request)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Metadata field graph is not supported",
    )


def test_get_model_status(models):
    """tfs:model_servers/get_model_status_impl.cc: one version, or all when no version is
    given (a label is not a version); NOT_FOUND for what the monitor does not know."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "mnist"
    request.model_spec.version_label = "anything"
    response = models.GetModelStatus(request, timeout=10)
    assert [(s.version, s.state) for s in response.model_version_status] == [
        (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
    ]
    request.model_spec.version.value = 9
    error = rpc_error(models.GetModelStatus, request)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find version 9 of model mnist",
    )
    missing = get_model_status_pb2.GetModelStatusRequest()
    assert rpc_error(models.GetModelStatus, missing).details() == "Missing ModelSpec"


# ------------------------------------------------------------- ReloadConfig
def config_proto(**kwargs: object) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(model_config(**kwargs), model_server_config_pb2.ModelServerConfig())


def reload(stub, config) -> model_management_pb2.ReloadConfigResponse:
    request = model_management_pb2.ReloadConfigRequest(config=config)
    return stub.HandleReloadConfigRequest(request, timeout=30)


def test_reload_config_replaces_the_whole_config(deployment: Deployment, start_server):
    """tfs:model_servers/model_service_impl.cc HandleReloadConfigRequest ->
    server_core.cc ReloadConfig: the new ModelConfigList replaces the old one; a rejected
    one is both the response status and the RPC status; other config kinds are refused."""
    deployment.add_version(1, "bucket")
    deployment.add_version(2, "flipped")
    deployment.write_config()
    server = start_server(deployment, port=0, model_config_file_poll_wait_seconds=0)
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        response = reload(stub, config_proto(policy="specific { versions: 2 }", labels={"x": 2}))
        assert response.status.error_code == 0
        wait_for(lambda: version_states(server.url) == {2: "AVAILABLE", 1: "END"}, what="v1 end")
        assert server.repository.labels == {"mnist": {"x": 2}}

        error = rpc_error(
            lambda r, timeout: stub.HandleReloadConfigRequest(r, timeout=timeout),
            model_management_pb2.ReloadConfigRequest(
                config=config_proto(policy="specific { versions: 2 }", labels={"x": 1})
            ),
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error.details() == (
            "Request to assign label to version 1 of model mnist, which is not currently "
            "available for inference"
        )
        assert server.repository.labels == {"mnist": {"x": 2}}  # the previous one stays

        custom = model_server_config_pb2.ModelServerConfig()
        custom.custom_model_config.Pack(model_server_config_pb2.ModelConfigList())
        error = rpc_error(
            lambda r, timeout: stub.HandleReloadConfigRequest(r, timeout=timeout),
            model_management_pb2.ReloadConfigRequest(config=custom),
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Only ModelConfigList is currently supported" in error.details()


def test_reload_config_waits_for_new_models(deployment: Deployment, start_server):
    """tfs:model_servers/server_core.cc AddModelsViaModelConfigList ->
    WaitUntilModelsAvailable: UNKNOWN "1 model(s) did not become available" for a new
    model whose version fails to load."""
    deployment.add_version(1, "bucket")
    deployment.write_config(policy="specific { versions: 1 }")
    server = start_server(deployment, port=0, model_config_file_poll_wait_seconds=0)
    broken = deployment.models_dir / "broken" / "1"
    broken.parent.mkdir()
    shutil.copytree(deployment.store["corrupt"], broken)
    config = config_proto(policy="specific { versions: 1 }")
    extra = config.model_config_list.config.add()
    extra.CopyFrom(config.model_config_list.config[0])
    extra.name, extra.base_path = "broken", "/models/broken"
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        error = rpc_error(
            lambda r, timeout: stub.HandleReloadConfigRequest(r, timeout=timeout),
            model_management_pb2.ReloadConfigRequest(config=config),
        )
    assert error.code() == grpc.StatusCode.UNKNOWN
    assert error.details().startswith(
        "1 model(s) did not become available: {{name: broken version: 1 due to error: "
    )


def test_the_rollout_tool_pushes_to_the_dev_server(deployment: Deployment, start_server):
    """infra/rollout's --grpc path against this server, with its config file poller off, so
    only what HandleReloadConfigRequest receives can change what is served."""
    deployment.add_version(1, "bucket")
    deployment.add_version(2, "flipped")
    deployment.write_config(policy="specific { versions: 1 }", labels={"stable": 1})
    server = start_server(
        deployment,
        port=0,
        model_config_file_poll_wait_seconds=0,
        allow_version_labels_for_unavailable_models=True,
    )
    common = [
        "--config", str(deployment.config_file), "--models-dir", str(deployment.models_dir),
        "--server", server.url, "--grpc", server.grpc_address,
        "--drain-seconds", "0", "--timeout", "30", "--poll-seconds", "0.05",
    ]  # fmt: skip
    assert cli.main(["canary", "2", *common]) == 0
    assert server.repository.labels == {"mnist": {"stable": 1, "canary": 2}}
    assert version_states(server.url) == {2: "AVAILABLE", 1: "AVAILABLE"}
    assert cli.main(["promote", *common]) == 0
    assert server.repository.labels["mnist"]["stable"] == 2
    push_config(server.grpc_address, config_proto(policy="specific { versions: 2 }"), 30)
    wait_for(lambda: version_states(server.url).get(1) == "END", what="v1 unloaded")


# ------------------------------------------------- a hostile or failed reload (#23)
def test_reload_with_a_base_path_outside_the_models_dir_is_refused(
    deployment: Deployment, start_server, tmp_path
):
    """A reload naming "/models/../../x" (or any path off the models directory) could load
    a SavedModel from anywhere; the dev server refuses it whole unless its flag allows it."""
    deployment.add_version(1, "bucket")
    deployment.write_config(policy="specific { versions: 1 }")
    outside = tmp_path / "outside"
    shutil.copytree(deployment.store["bucket"], outside / "evil" / "1")
    server = start_server(deployment, port=0, model_config_file_poll_wait_seconds=0)
    traversal = "/models/" + "../" * 8 + str(outside / "evil").lstrip("/")
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        for base_path in (traversal, str(outside / "evil")):
            config = config_proto(policy="specific { versions: 1 }")
            evil = config.model_config_list.config.add()
            evil.CopyFrom(config.model_config_list.config[0])
            evil.name, evil.base_path = "evil", base_path
            error = rpc_error(
                lambda r, timeout: stub.HandleReloadConfigRequest(r, timeout=timeout),
                model_management_pb2.ReloadConfigRequest(config=config),
            )
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "is outside the models directory" in error.details()
    assert set(server.repository.models) == {"mnist"}
    assert "evil" not in server.repository.all_states()

    allowed = start_server(
        deployment,
        port=0,
        model_config_file_poll_wait_seconds=0,
        allow_base_path_outside_models_dir=True,
    )
    config = config_proto(policy="specific { versions: 1 }")
    evil = config.model_config_list.config.add()
    evil.CopyFrom(config.model_config_list.config[0])
    evil.name, evil.base_path = "evil", traversal
    with grpc.insecure_channel(allowed.grpc_address) as channel:
        response = reload(model_service_pb2_grpc.ModelServiceStub(channel), config)
    assert response.status.error_code == 0
    assert version_states(allowed.url, "evil") == {1: "AVAILABLE"}


@pytest.mark.parametrize(
    "hostile",
    [
        [  # load v1, then move stable to it and drop v2: every answer from v1
            {"policy": "specific { versions: 1 versions: 2 }", "labels": {"stable": 2}},
            {"policy": "specific { versions: 1 }", "labels": {"stable": 1}},
        ],
        [None],  # an empty model list: nothing served
    ],
    ids=["stable-to-v1", "empty-list"],
)
def test_the_config_poller_restores_the_file_after_a_hostile_reload(
    deployment: Deployment, start_server, hostile
):
    """A reload that unloads the version the file's label names used to leave the poller
    refusing the file ("label to version 2 ... not currently available") until a restart;
    it now loads the file's versions first and then applies the file whole. The poller
    is called by hand so that it cannot undo the hostile steps before they are done."""
    deployment.add_version(1, "bucket")
    deployment.add_version(2, "flipped")
    deployment.write_config(policy="specific { versions: 2 }", labels={"stable": 2})
    server = start_server(
        deployment,
        port=0,
        model_config_file_poll_wait_seconds=0,
        allow_version_labels_for_unavailable_models=True,
    )
    empty = model_server_config_pb2.ModelServerConfig(
        model_config_list=model_server_config_pb2.ModelConfigList()
    )
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        for step in hostile:
            config = empty if step is None else config_proto(**step)
            assert reload(stub, config).status.error_code == 0
            server.repository.wait_until_settled(timeout=30)
    server._poll_config()  # what the poller does on its next tick
    assert server.repository.labels == {"mnist": {"stable": 2}}
    server.repository.wait_until_settled(timeout=30)
    assert version_states(server.url)[2] == "AVAILABLE"
    assert version_states(server.url).get(1, "END") == "END"
    assert not server._config_failed
    request = predict_request(255, label="stable")
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        assert stub.Predict(request, timeout=10).model_spec.version.value == 2


def test_the_poller_still_refuses_a_new_file_breaking_the_label_rule(
    deployment: Deployment, start_server
):
    """The two-step restore is only for a file that was once applied whole: an edited file
    moving a label to a version not yet loaded is refused whole, as TF Serving does."""
    deployment.add_version(1, "bucket")
    deployment.add_version(2, "flipped")
    deployment.write_config(policy="specific { versions: 1 }", labels={"stable": 1})
    server = start_server(deployment, allow_version_labels_for_unavailable_models=True)
    deployment.write_config(policy="specific { versions: 2 }", labels={"stable": 2})
    wait_for(lambda: server._config_failed, what="the rejection")
    server.repository.poll_filesystem()
    assert version_states(server.url) == {1: "AVAILABLE"}
    assert server.repository.labels == {"mnist": {"stable": 1}}


def test_grpc_tensor_round_trip_of_other_dtypes():
    """tensorflow Tensor::AsProtoField / FromProto for the fields TF Serving answers in."""
    from serving.grpcserver import tensor_from_proto, tensor_proto

    for array in (
        np.array([[1.5, -2.0]], np.float32),
        np.array([1, 2], np.int64),
        np.array([True, False]),
        np.array([b"a", b"bc"], dtype=object),
        np.array([0.5], np.float16),
        np.array([7], np.uint32),
    ):
        proto = tensor_proto(array)
        assert not proto.tensor_content
        back = tensor_from_proto("x", proto)
        assert back.tolist() == array.tolist()
        assert back.shape == array.shape
    empty = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    empty.tensor_shape.dim.add(size=3)
    assert tensor_from_proto("x", empty).tolist() == [0.0, 0.0, 0.0]


# ------------------------------------------------------------------ metrics
def metric_values(server: ModelServer) -> dict[str, float]:
    page = server.metrics.render(server.repository.all_states())
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith(":tensorflow:serving:")
    }


def test_grpc_calls_are_counted_and_timed_as_tf_serving_does(grpc_served, predictions):
    """prediction_service_impl.cc: RecordModelRequestCount for every Predict, and
    RecordRequestLatency(API "Predict", entrypoint "GRPC") for the ones that succeed."""
    before = metric_values(grpc_served)
    predictions.Predict(predict_request(255, label="stable"), timeout=10)
    rpc_error(predictions.Predict, predict_request(255, version=9))
    after = metric_values(grpc_served)

    def grew(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert grew(':tensorflow:serving:request_count{model_name="mnist",status="OK"}') == 1
    assert grew(':tensorflow:serving:request_count{model_name="mnist",status="NOT_FOUND"}') == 1
    grpc = 'model_name="mnist",API="Predict",entrypoint="GRPC"'
    assert grew(f":tensorflow:serving:request_latency_count{{{grpc}}}") == 1
    assert grew(f':tensorflow:serving:request_latency_bucket{{{grpc},le="+Inf"}}') == 1
