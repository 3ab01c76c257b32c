"""TF Serving's gRPC API: PredictionService and ModelService on --port.

The services are tensorflow-serving-api's generated ones (prediction_service_pb2_grpc,
model_service_pb2_grpc), so any TF Serving client talks to them unchanged. Behaviour
follows model_servers/prediction_service_impl.cc, model_service_impl.cc,
get_model_status_impl.cc, servables/tensorflow/predict_util.cc and
get_model_metadata_impl.cc: a failure is the TensorFlow status as a gRPC status (same
code, message cut at 1024 characters + "...TRUNCATED", grpc_status_util.cc).

- Predict takes TensorProtos as Tensor::FromProto reads them (too few values repeat the
  last, too many are dropped, bad tensor_content is "tensor parsing error") and answers
  them as Tensor::AsProtoField writes them (float_val, int64_val, ...), with the
  resolved model spec. No dtype or shape is checked before Session::Run: the graph does.
- HandleReloadConfigRequest replaces the whole config (ServerCore::ReloadConfig), waits
  for newly added models to become available, and reports failure both in the response
  status and as the RPC's status. The config file poller applies its file again on its
  next poll, as TF Serving's does every period.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from serving import inference
from serving.batching import Batcher
from serving.errors import ServingError, from_exception, invalid_argument
from serving.metrics import Metrics
from serving.repository import ModelRepository
from serving.servable import DEFAULT_SIGNATURE, Servable

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 1024
MAX_MESSAGE_BYTES = 2**31 - 1  # server.cc: builder.SetMaxMessageSize(kint32max)
SIGNATURE_DEF = "signature_def"

# TensorProto's value field for each dtype (tensor.proto, tensor_util).
_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_BFLOAT16: "half_val",
}


def tensor_from_proto(alias: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Tensor::FromProto, or GetInputValues' "tensor parsing error: <alias>".

    tensor_content must hold exactly the shape's bytes; repeated values are cast to the
    dtype (int_val wraps into uint8), and too few repeat the last one (none: zeros).
    """
    error = invalid_argument(f"tensor parsing error: {alias}")
    shape = proto.tensor_shape
    if shape.unknown_rank or any(d.size < 0 for d in shape.dim):
        raise error
    dims = tuple(d.size for d in shape.dim)
    count = int(np.prod(dims, dtype=np.int64))
    field = _VALUE_FIELDS.get(proto.dtype)
    try:
        numpy_dtype = (
            np.dtype(object)
            if proto.dtype == types_pb2.DT_STRING
            else np.dtype(tf.dtypes.as_dtype(proto.dtype).as_numpy_dtype)
        )
        if proto.tensor_content or field is None:
            return tf.make_ndarray(proto)
    except (TypeError, ValueError, KeyError):
        raise error from None
    values = list(getattr(proto, field))
    if proto.dtype == types_pb2.DT_STRING:
        flat = np.empty(len(values), dtype=object)
        flat[:] = values
    elif field == "half_val":
        flat = np.array(values, dtype=np.int64).astype(np.uint16).view(numpy_dtype)
    elif field == "int_val":
        flat = np.array(values, dtype=np.int64).astype(numpy_dtype)
    else:
        flat = np.array(values, dtype=numpy_dtype)
    if not len(flat):
        if proto.dtype == types_pb2.DT_STRING:
            flat = np.empty(count, dtype=object)
            flat[:] = [b""] * count
            return flat.reshape(dims)
        return np.zeros(dims, dtype=numpy_dtype)
    if len(flat) < count:
        flat = np.concatenate([flat, np.repeat(flat[-1:], count - len(flat))])
    return flat[:count].reshape(dims)


def tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Tensor::AsProtoField: the values in the dtype's repeated field, not tensor_content."""
    array = np.asarray(array)
    if array.dtype.kind in "OSU":
        dtype = types_pb2.DT_STRING
    else:
        dtype = tf.dtypes.as_dtype(array.dtype).as_datatype_enum
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    flat = array.ravel()
    field = _VALUE_FIELDS.get(dtype)
    if field is None:  # complex and the rarer dtypes: tensor_util's encoding
        return tf.make_tensor_proto(array)
    if dtype == types_pb2.DT_STRING:
        values: list[Any] = [v if isinstance(v, bytes) else str(v).encode() for v in flat]
    elif dtype in (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
        values = flat.view(np.uint16).tolist()
    else:
        values = flat.tolist()
    getattr(proto, field).extend(values)
    return proto


def _code_name(error: ServingError) -> str:
    return error.code if error.code in grpc.StatusCode.__members__ else "UNKNOWN"


def _grpc_message(message: str) -> str:
    if len(message) > MESSAGE_LIMIT:
        return message[:MESSAGE_LIMIT] + "...TRUNCATED"
    return message


class Services(
    prediction_service_pb2_grpc.PredictionServiceServicer,
    model_service_pb2_grpc.ModelServiceServicer,
):
    """PredictionService and ModelService over one repository."""

    def __init__(
        self,
        repository: ModelRepository,
        reload_config: Callable[[model_server_config_pb2.ModelServerConfig], None],
        batcher: Batcher | None = None,
        method_check: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self.repository = repository
        self.reload_config = reload_config
        self.batcher = batcher
        self.method_check = method_check
        self.metrics = metrics or Metrics()

    def _measured(
        self, api: str, model: str, context: grpc.ServicerContext, work: Callable[[], Any]
    ) -> Any:
        """_answer, counted and timed as prediction_service_impl.cc does (entrypoint GRPC)."""
        started, status = time.perf_counter(), ["OK"]

        def watched() -> Any:
            try:
                return work()
            except ServingError as error:
                status[0] = error.code
                raise
            except Exception as exc:
                status[0] = from_exception(exc).code
                raise

        try:
            return self._answer(context, watched)
        finally:
            seconds = time.perf_counter() - started
            self.metrics.observe(model, api, status[0], seconds, entrypoint="GRPC")

    # ---------------------------------------------------------------- helpers
    def _answer(self, context: grpc.ServicerContext, work: Callable[[], Any]) -> Any:
        try:
            return work()
        except ServingError as error:
            context.abort(grpc.StatusCode[_code_name(error)], _grpc_message(error.message))
        except Exception as exc:  # a bug, or TensorFlow failing in a way not mapped
            error = from_exception(exc)
            if error.code == "UNKNOWN":
                log.exception("Internal error in a gRPC call")
            context.abort(grpc.StatusCode[_code_name(error)], _grpc_message(error.message))

    def _servable(self, spec: model_pb2.ModelSpec) -> Servable:
        """ServerCore::ServableRequestFromModelSpec + GetServableHandle."""
        if not spec.name:
            raise invalid_argument("ModelSpec has no name specified.")
        choice = spec.WhichOneof("version_choice")
        version = spec.version.value if choice == "version" else None
        label = spec.version_label if choice == "version_label" else None
        return self.repository.servable(spec.name, version, label)

    @staticmethod
    def _model_spec(
        target: model_pb2.ModelSpec, name: str, signature: str | None, version: int
    ) -> None:
        """MakeModelSpec: an empty signature name is answered as serving_default."""
        target.Clear()
        target.name = name
        if signature is not None:
            target.signature_name = signature or DEFAULT_SIGNATURE
        target.version.value = version

    # ------------------------------------------------------- PredictionService
    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext) -> Any:
        model = request.model_spec.name
        return self._measured("Predict", model, context, lambda: self._predict(request))

    def _predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        servable = self._servable(request.model_spec)
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signatures = servable.meta_graph.signature_def
        if name not in signatures:
            raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{name}" not found.')
        signature_def = signatures[name]
        response = predict_pb2.PredictResponse()
        self._model_spec(response.model_spec, request.model_spec.name, name, servable.version)
        if self.method_check:
            inference.check_predict_method(signature_def.method_name)
        # VerifyRequestInputsSize and GetInputValues' alias checks, then the tensors.
        signature = servable.check_inputs(name, {k: np.empty(0) for k in request.inputs})
        inputs = {
            alias: tensor_from_proto(alias, request.inputs[alias])
            for alias in sorted(signature.inputs)
        }
        aliases = list(request.output_filter)
        seen: set[str] = set()
        for alias in aliases:
            if alias not in signature_def.outputs:
                raise invalid_argument(
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{','.join(sorted(signature_def.outputs))}}}."
                )
            if alias in seen:
                raise invalid_argument(f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        if self.batcher is None:
            outputs = servable.run(name, inputs)
        else:
            outputs = self.batcher.run(servable, name, inputs)
        for alias in aliases or sorted(outputs):
            response.outputs[alias].CopyFrom(tensor_proto(outputs[alias]))
        return response

    def Classify(
        self, request: classification_pb2.ClassificationRequest, context: grpc.ServicerContext
    ) -> Any:
        def work() -> classification_pb2.ClassificationResponse:
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            servable = self._servable(request.model_spec)
            signature = request.model_spec.signature_name
            result = inference.classify(
                servable, signature, request.input, method_check=self.method_check
            )
            response = classification_pb2.ClassificationResponse(result=result)
            self._model_spec(
                response.model_spec, request.model_spec.name, signature, servable.version
            )
            return response

        return self._measured("Classify", request.model_spec.name, context, work)

    def Regress(
        self, request: regression_pb2.RegressionRequest, context: grpc.ServicerContext
    ) -> Any:
        def work() -> regression_pb2.RegressionResponse:
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            servable = self._servable(request.model_spec)
            signature = request.model_spec.signature_name
            result = inference.regress(
                servable, signature, request.input, method_check=self.method_check
            )
            response = regression_pb2.RegressionResponse(result=result)
            self._model_spec(
                response.model_spec, request.model_spec.name, signature, servable.version
            )
            return response

        return self._measured("Regress", request.model_spec.name, context, work)

    def GetModelMetadata(
        self,
        request: get_model_metadata_pb2.GetModelMetadataRequest,
        context: grpc.ServicerContext,
    ) -> Any:
        def work() -> get_model_metadata_pb2.GetModelMetadataResponse:
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            if not request.metadata_field:
                raise invalid_argument(
                    "GetModelMetadataRequest must specify at least one metadata_field"
                )
            for field in request.metadata_field:
                if field != SIGNATURE_DEF:
                    raise invalid_argument(f"Metadata field {field} is not supported")
            servable = self._servable(request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            signatures = get_model_metadata_pb2.SignatureDefMap()
            signatures.signature_def.MergeFrom(servable.meta_graph.signature_def)
            response.metadata[SIGNATURE_DEF].Pack(signatures)
            return response

        return self._answer(context, work)

    def MultiInference(self, request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "The development model server does not implement MultiInference",
        )

    # ------------------------------------------------------------ ModelService
    def GetModelStatus(
        self,
        request: get_model_status_pb2.GetModelStatusRequest,
        context: grpc.ServicerContext,
    ) -> Any:
        def work() -> get_model_status_pb2.GetModelStatusResponse:
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            response = get_model_status_pb2.GetModelStatusResponse()
            for status in self.repository.status(spec.name, version):
                entry = response.model_version_status.add(
                    version=status.version,
                    state=get_model_status_pb2.ModelVersionStatus.State.Value(status.state.value),
                )
                entry.status.error_code = error_codes_pb2.Code.Value(status.error_code)
                entry.status.error_message = status.error_message
            return response

        return self._answer(context, work)

    def HandleReloadConfigRequest(
        self,
        request: model_management_pb2.ReloadConfigRequest,
        context: grpc.ServicerContext,
    ) -> Any:
        response = model_management_pb2.ReloadConfigResponse()
        error: ServingError | None = None
        if request.config.WhichOneof("config") != "model_config_list":
            error = invalid_argument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                "ModelConfigList is currently supported"
            )
        else:
            try:
                self.reload_config(request.config)
            except ServingError as exc:
                error = exc
            except Exception as exc:
                log.exception("Reloading the config over gRPC failed")
                error = from_exception(exc)
        for name in request.metric_names:
            response.metric.add(name=name, int64_value_increase=0)
        if error is None:
            response.status.error_code = error_codes_pb2.OK
            return response
        log.error("ReloadConfig failed: %s", error.message)
        response.status.error_code = error_codes_pb2.Code.Value(error.code)
        response.status.error_message = error.message
        context.abort(grpc.StatusCode[_code_name(error)], _grpc_message(error.message))


class GrpcServer:
    """A grpc.Server with both services; start() binds, stop() drains."""

    def __init__(self, host: str, port: int, services: Services, max_workers: int) -> None:
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
            options=options,
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(services, self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(services, self._server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = self._server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"Failed to bind the gRPC port {address}: {exc}") from None
        if not bound:
            raise OSError(f"Failed to bind the gRPC port {address}")
        self.port = bound

    def start(self) -> None:
        self._server.start()

    def stop(self, grace: float = 10.0) -> None:
        self._server.stop(grace).wait()
