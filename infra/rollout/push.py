"""Push a whole ModelServerConfig to TF Serving over gRPC: ModelService.HandleReloadConfigRequest.

For a model server that does not poll its config file, or to apply a change at once.
The request replaces the server's whole config, which is why the tool always sends
the complete file it has just written, never a fragment.
"""

from __future__ import annotations

import grpc
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc, status_pb2

from infra.rollout.errors import RolloutError
from infra.rollout.served import ModelServerConfig

_CODES = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type


def push_config(address: str, config: ModelServerConfig, timeout_seconds: float) -> None:
    """Have the server at `address` (host:port) reload `config`; RolloutError if it does not."""
    request = model_management_pb2.ReloadConfigRequest(config=config)
    with grpc.insecure_channel(address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        try:
            response = stub.HandleReloadConfigRequest(request, timeout=timeout_seconds)
        except grpc.RpcError as error:
            raise RolloutError(
                f"TF Serving at {address} did not take the config: "
                f"{error.code().name}: {error.details()}"
            ) from None
    if response.status.error_code != 0:
        code = _CODES.values_by_number.get(response.status.error_code)
        raise RolloutError(
            f"TF Serving at {address} rejected the config: "
            f"{code.name if code else response.status.error_code}: "
            f"{response.status.error_message}"
        )
