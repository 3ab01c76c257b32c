"""--enable_signature_method_name_check on Predict, over REST and gRPC alike.

tfs:servables/tensorflow/predict_util.cc RunPredict: with the check on, a signature whose
method_name is none of predict, classify or regress is refused as INTERNAL, with the same
words on both APIs (one check, serving/inference.py check_predict_method, serves both).
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_testlib import MNIST, Deployment, error_of, image, post
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

MESSAGE = (
    "Expected prediction signature method_name to be one of {tensorflow/serving/predict, "
    "tensorflow/serving/classify, tensorflow/serving/regress}. Was: custom/method"
)


@pytest.fixture
def custom_method(deployment: Deployment) -> Deployment:
    """Version 1 with its serving_default signature's method_name rewritten on disk."""
    proto_file = deployment.add_version(1, "bucket") / "saved_model.pb"
    saved = saved_model_pb2.SavedModel.FromString(proto_file.read_bytes())
    saved.meta_graphs[0].signature_def["serving_default"].method_name = "custom/method"
    proto_file.write_bytes(saved.SerializeToString())
    deployment.write_config(policy="specific { versions: 1 }")
    return deployment


@pytest.mark.parametrize("checked", [True, False])
def test_rest_and_grpc_refuse_a_foreign_method_alike(custom_method, start_server, checked):
    server = start_server(custom_method, port=0, enable_signature_method_name_check=checked)
    response = post(server, f"{MNIST}:predict", {"instances": [image(255)]})
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mnist"
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(np.full((1, 28, 28), 255, np.uint8)))
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        if not checked:
            assert response.status_code == 200, response.text
            assert stub.Predict(request, timeout=30).outputs["digit"].int64_val
            return
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(request, timeout=30)
    assert response.status_code == 500
    assert error_of(response) == MESSAGE
    assert refused.value.code() == grpc.StatusCode.INTERNAL
    assert refused.value.details() == MESSAGE
