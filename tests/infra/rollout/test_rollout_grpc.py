"""The gRPC config push, over a real gRPC round trip to an in-process ModelService.

Real TensorFlow Serving cannot run here; this server implements the same service
definition (tensorflow_serving.apis.model_service_pb2_grpc), so the request, its
serialization and the error paths are the ones TF Serving sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from infra.rollout import plan
from infra.rollout.errors import RolloutError
from infra.rollout.push import push_config
from infra.rollout.served import Served, parse, served_of, with_served
from tests.conftest import ROOT, free_port
from tests.infra.rollout.conftest import BEFORE_A_CANARY

SHIPPED = parse((ROOT / "serving" / "models.config").read_text())
INVALID_ARGUMENT = 3  # tensorflow.error.Code


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """Keeps what it is sent; refuses a config whose labels point at unserved versions."""

    def __init__(self) -> None:
        self.received: list = []
        self.refuse_everything = False

    def HandleReloadConfigRequest(self, request, context):  # the generated method name
        self.received.append(request.config)
        response = model_management_pb2.ReloadConfigResponse()
        if self.refuse_everything:
            response.status.error_code = INVALID_ARGUMENT
            response.status.error_message = "no"
        for model in request.config.model_config_list.config:
            served = set(model.model_version_policy.specific.versions)
            for label, version in model.version_labels.items():
                if version not in served:
                    response.status.error_code = INVALID_ARGUMENT
                    response.status.error_message = f"label {label} -> {version} is not served"
        return response


@pytest.fixture
def model_service() -> Iterator[tuple[str, ModelService]]:
    service = ModelService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", service
    server.stop(grace=None)


def test_the_whole_config_arrives(model_service):
    address, service = model_service
    config = with_served(SHIPPED, "mnist", Served(frozenset({1, 2, 3}), {"stable": 2, "canary": 3}))
    push_config(address, config, timeout_seconds=10)
    [received] = service.received
    assert received == config
    assert served_of(received, "mnist").labels == {"stable": 2, "canary": 3}


def test_a_rejected_config_is_an_error_with_the_server_s_reason(model_service):
    address, _ = model_service
    config = with_served(SHIPPED, "mnist", Served(frozenset({1}), {"stable": 2}))
    with pytest.raises(RolloutError, match="rejected the config: INVALID_ARGUMENT: label stable"):
        push_config(address, config, timeout_seconds=10)


def test_no_server_is_an_error_not_a_hang():
    with pytest.raises(RolloutError, match="did not take the config: UNAVAILABLE"):
        push_config(f"127.0.0.1:{free_port()}", SHIPPED, timeout_seconds=5)


def test_each_step_of_a_rollout_is_pushed_whole_after_it_is_written(model_service, deployment):
    address, service = model_service
    deployment.grpc = address
    deployment.apply(plan.canary(BEFORE_A_CANARY, 3, "canary"))
    assert [served_of(config, "mnist") for config in service.received] == [
        Served(frozenset({1, 2, 3}), {"stable": 2, "canary": 2}),
        Served(frozenset({1, 2, 3}), {"stable": 2, "canary": 3}),
    ]
    assert service.received[-1] == parse(deployment.config_file.read_text())


def test_a_push_the_server_rejects_restores_the_file(model_service, deployment):
    address, service = model_service
    deployment.grpc = address
    service.refuse_everything = True
    before = deployment.config_file.read_text()
    with pytest.raises(
        RolloutError, match=r"rejected the config: INVALID_ARGUMENT: no .* restored"
    ):
        deployment.apply(plan.canary(BEFORE_A_CANARY, 3, "canary"))
    assert deployment.config_file.read_text() == before
