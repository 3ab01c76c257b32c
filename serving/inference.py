"""Classify and Regress, as TF Serving's classifier.cc, regressor.cc and util.cc run them.

A request carries tf.Examples (an ExampleList, or an ExampleListWithContext whose
context is prepended to each example's serialized bytes). The signature is checked
the way GetClassificationSignatureDef / GetRegressionSignatureDef do: by default
(no --enable_signature_method_name_check) a signature qualifies by its shape alone:
one input named "inputs" and "classes"/"scores" outputs (classify) or one "outputs"
output (regress). The MNIST model's signatures are predict signatures, so both fail
there with TF Serving's 400. The JSON side is json_tensor.cc's
FillClassifyRegressRequestFromJson and MakeJsonFrom{Classification,Regression}Result.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import text_format
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

from serving import rjson, tensors
from serving.errors import ServingError, invalid_argument
from serving.servable import DEFAULT_SIGNATURE, Servable

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
CLASSIFY_INPUTS, CLASSIFY_CLASSES, CLASSIFY_SCORES = "inputs", "classes", "scores"
REGRESS_INPUTS, REGRESS_OUTPUTS = "inputs", "outputs"


def debug_string(message: Any) -> str:
    """A proto's DebugString(): its text format, one field per line."""
    return text_format.MessageToString(message)


# ------------------------------------------------------------------ JSON in
def input_from_json(doc: dict[str, Any]) -> input_pb2.Input:
    """FillClassifyRegressRequestFromJson, after ParseJson and FillSignature."""
    result = input_pb2.Input()
    has_context = "context" in doc
    if has_context:
        _example_from_json(doc["context"], result.example_list_with_context.context)
    if "examples" not in doc:
        raise tensors._format_error(
            doc, "When method is classify, key 'examples' is expected and was not found"
        )
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise tensors._format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise tensors._format_error(doc, "'examples' value is an empty array")
    for value in examples:
        target = (
            result.example_list_with_context.examples.add()
            if has_context
            else result.example_list.examples.add()
        )
        _example_from_json(value, target)
    return result


def _example_from_json(value: Any, example: example_pb2.Example) -> None:
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {rjson.json_type(value)}")
    for name, content in rjson.members(value):
        feature = feature_pb2.Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_to_feature(item, name, feature)
        example.features.feature[name].CopyFrom(feature)


def _add_to_feature(value: Any, name: str, feature: feature_pb2.Feature) -> None:
    """AddValueToFeature: the first value fixes the feature's kind."""

    def check(kind: str) -> None:
        current = feature.WhichOneof("kind")
        if current is not None and current != kind:
            spelled = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}
            raise invalid_argument(
                f"Unexpected element type in feature: {name} expecting type: {spelled[current]}"
            )

    unexpected = invalid_argument(
        f"Feature: {name} has element with unexpected JSON type: {rjson.json_type(value)}"
    )
    if value is None or isinstance(value, list):
        raise unexpected
    if isinstance(value, bool):
        check("int64_list")
        feature.int64_list.value.append(1 if value else 0)
    elif isinstance(value, dict):
        if not tensors.is_b64(value):
            raise unexpected
        check("bytes_list")
        feature.bytes_list.value.append(tensors._base64(value))
    elif isinstance(value, str | bytes):
        check("bytes_list")
        feature.bytes_list.value.append(
            value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
        )
    elif isinstance(value, float):
        check("float_list")
        feature.float_list.value.append(value)
    else:
        check("int64_list")
        if value > rjson.INT64_MAX:
            raise invalid_argument(
                f"Feature: {name} has uint64_t element. Only int64_t is supported."
            )
        feature.int64_list.value.append(value)


# ----------------------------------------------------------------- running
def _signature_def(servable: Servable, signature_name: str) -> meta_graph_pb2.SignatureDef:
    key = signature_name or DEFAULT_SIGNATURE
    if key not in servable.meta_graph.signature_def:
        raise invalid_argument(f"No signature was found with the name: {key}")
    return servable.meta_graph.signature_def[key]


def _check_method(signature: meta_graph_pb2.SignatureDef, kind: str, method: str) -> None:
    if signature.method_name != method:
        raise invalid_argument(
            f"Expected {kind} signature method_name to be {method}. Was: {signature.method_name}"
        )


def check_predict_method(method_name: str) -> None:
    """--enable_signature_method_name_check for Predict (REST and gRPC alike): TF Serving's
    predict_util accepts any of the three methods and refuses anything else as INTERNAL."""
    if method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
        raise ServingError(
            "INTERNAL",
            "Expected prediction signature method_name to be one of "
            f"{{{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: {method_name}",
        )


def classification_signature(
    servable: Servable, signature_name: str, *, method_check: bool = False
) -> meta_graph_pb2.SignatureDef:
    """GetClassificationSignatureDef + PreProcessClassification."""
    signature = _signature_def(servable, signature_name)
    if method_check:
        _check_method(signature, "classification", CLASSIFY_METHOD)
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise invalid_argument(
            f"Expected one or two output Tensors, found {len(signature.outputs)}"
        )
    if CLASSIFY_INPUTS not in signature.inputs:
        raise invalid_argument(
            f"No classification inputs found in SignatureDef: {debug_string(signature)}"
        )
    if CLASSIFY_CLASSES not in signature.outputs and CLASSIFY_SCORES not in signature.outputs:
        raise invalid_argument(
            'Expected classification signature outputs to contain at least one of "classes" '
            f'or "scores". Signature was: {debug_string(signature)}'
        )
    return signature


def regression_signature(
    servable: Servable, signature_name: str, *, method_check: bool = False
) -> meta_graph_pb2.SignatureDef:
    """GetRegressionSignatureDef + PreProcessRegression."""
    signature = _signature_def(servable, signature_name)
    if method_check:
        _check_method(signature, "regression", REGRESS_METHOD)
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if REGRESS_INPUTS not in signature.inputs:
        raise invalid_argument(
            f"No regression inputs found in SignatureDef: {debug_string(signature)}"
        )
    if REGRESS_OUTPUTS not in signature.outputs:
        raise invalid_argument(
            f"No regression outputs found in SignatureDef: {debug_string(signature)}"
        )
    return signature


def serialized_examples(request_input: input_pb2.Input) -> np.ndarray:
    """InputToSerializedExampleTensor: one string per example, the context bytes first."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        values = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = request_input.example_list_with_context
        context = with_context.context.SerializeToString()
        values = [context + e.SerializeToString() for e in with_context.examples]
    else:
        values = []
    if not values:
        raise invalid_argument("Input is empty.")
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _shape_text(array: np.ndarray) -> str:
    """TensorShape::DebugString(): [2,3]."""
    return "[" + ",".join(str(d) for d in array.shape) + "]"


def _dt_name(array: np.ndarray) -> str:
    return "DT_" + tensors.output_dtype_name(array).upper()


def classify(
    servable: Servable,
    signature_name: str,
    request_input: input_pb2.Input,
    *,
    method_check: bool = False,
) -> classification_pb2.ClassificationResult:
    """RunClassify on a loaded version."""
    signature = classification_signature(servable, signature_name, method_check=method_check)
    examples = serialized_examples(request_input)
    key = signature_name or DEFAULT_SIGNATURE
    outputs = servable.run(key, {CLASSIFY_INPUTS: examples})
    classes = outputs.get(CLASSIFY_CLASSES) if CLASSIFY_CLASSES in signature.outputs else None
    scores = outputs.get(CLASSIFY_SCORES) if CLASSIFY_SCORES in signature.outputs else None
    count = len(examples)
    for label, tensor, dtype in (("classes", classes, "DT_STRING"), ("scores", scores, "DT_FLOAT")):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise invalid_argument(
                f"Expected Tensor shape: [batch_size num_classes] but got {_shape_text(tensor)}"
            )
        if _dt_name(tensor) != dtype:
            raise invalid_argument(f"Expected {label} Tensor of {dtype}. Got: {_dt_name(tensor)}")
        if tensor.shape[0] != count:
            raise invalid_argument(
                f"Expected {label} output batch size of {count}. Got: {tensor.shape[0]}"
            )
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid_argument(
            "Tensors class and score should match in dim_size(1). Got "
            f"{classes.shape[1]} vs. {scores.shape[1]}"
        )
    width = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
    result = classification_pb2.ClassificationResult()
    for i in range(count):
        classifications = result.classifications.add()
        for c in range(width):
            entry = classifications.classes.add()
            if classes is not None:
                value = classes[i, c]
                raw = value if isinstance(value, bytes) else str(value).encode()
                entry.label = raw.decode("utf-8", "replace")
            if scores is not None:
                entry.score = float(scores[i, c])
    return result


def regress(
    servable: Servable,
    signature_name: str,
    request_input: input_pb2.Input,
    *,
    method_check: bool = False,
) -> regression_pb2.RegressionResult:
    """RunRegress on a loaded version."""
    regression_signature(servable, signature_name, method_check=method_check)
    examples = serialized_examples(request_input)
    key = signature_name or DEFAULT_SIGNATURE
    output = servable.run(key, {REGRESS_INPUTS: examples})[REGRESS_OUTPUTS]
    count = len(examples)
    if not (output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)):
        raise invalid_argument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but "
            f"got {_shape_text(output)}"
        )
    if output.shape[0] != count:
        raise invalid_argument(
            f"Input batch size did not match output batch size: {count} vs. {output.shape[0]}"
        )
    if _dt_name(output) != "DT_FLOAT":
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {_dt_name(output)}")
    result = regression_pb2.RegressionResult()
    for value in output.ravel().tolist():
        result.regressions.add(value=value)
    return result


# ----------------------------------------------------------------- JSON out
def classification_json(result: classification_pb2.ClassificationResult) -> bytes:
    """MakeJsonFromClassificationResult: {"results": [[[label, score], ...], ...]}."""
    if not result.classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    writer = rjson.PrettyWriter()
    writer.start(array=False)
    writer.key("results")
    writer.start(array=True)
    for classifications in result.classifications:
        writer.single_line_arrays = True
        writer.start(array=True)
        scores = np.array([c.score for c in classifications.classes], dtype=np.float32)
        texts = rjson.decimal_texts(scores)
        for entry, score in zip(classifications.classes, texts, strict=True):
            writer.start(array=True)
            writer.scalar(rjson.quote(entry.label))
            writer.scalar(score)
            writer.end()
        writer.end()
        writer.single_line_arrays = False
    writer.end()
    writer.end()
    return writer.text().encode("utf-8", "surrogateescape")


def regression_json(result: regression_pb2.RegressionResult) -> bytes:
    """MakeJsonFromRegressionResult: {"results": [value, ...]} on one line."""
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    writer = rjson.PrettyWriter()
    writer.start(array=False)
    writer.key("results")
    writer.single_line_arrays = True
    values = np.array([r.value for r in result.regressions], dtype=np.float32)
    writer.array_of(rjson.decimal_texts(values))
    writer.single_line_arrays = False
    writer.end()
    return writer.text().encode("utf-8", "surrogateescape")
