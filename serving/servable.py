"""One loaded SavedModel version: its signature defs and a way to run them.

Signature defs are read from saved_model.pb with the protos (not from the
loaded object), because that is what TF Serving's metadata and input
conversion are based on: dtypes, shapes and every signature, init op included.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from serving.errors import ServingError, from_exception, invalid_argument

SERVING_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"
SAVED_MODEL_FILE = "saved_model.pb"


@dataclass(frozen=True)
class TensorSpec:
    """A signature input or output: numpy dtype, DataTypeString name and shape (None = unknown)."""

    dtype: np.dtype
    dtype_name: str
    shape: tuple[int | None, ...] | None
    feed_name: str = ""  # the graph tensor, e.g. "serving_default_image:0"

    @classmethod
    def from_proto(cls, info: meta_graph_pb2.TensorInfo) -> TensorSpec:
        shape = info.tensor_shape
        dims = (
            None
            if shape.unknown_rank
            else tuple(d.size if d.size >= 0 else None for d in shape.dim)
        )
        name = data_type_string(info.dtype)
        if info.dtype == types_pb2.DT_INVALID:  # e.g. the outputs of __saved_model_init_op
            return cls(np.dtype(object), name, dims, info.name)
        tf_dtype = tf.dtypes.as_dtype(info.dtype)
        numpy_dtype = (
            np.dtype(object) if tf_dtype == tf.string else np.dtype(tf_dtype.as_numpy_dtype)
        )
        return cls(numpy_dtype, name, dims, info.name)

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        if self.shape is None:
            return True
        return len(shape) == len(self.shape) and all(
            want is None or want == got for want, got in zip(self.shape, shape, strict=True)
        )


@dataclass(frozen=True)
class Signature:
    name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]


def data_type_string(dtype: int) -> str:
    """TensorFlow's C++ DataTypeString: DT_FLOAT -> "float", DT_UINT8 -> "uint8"."""
    try:
        name = types_pb2.DataType.Name(dtype)
    except ValueError:
        return f"unknown dtype enum ({dtype})"
    if name.endswith("_REF"):
        return name[3:-4].lower() + "_ref"
    return name[3:].lower() if name != "DT_INVALID" else "INVALID"


def format_shape(shape: tuple[int | None, ...] | None) -> str:
    """TF Serving's [x,y,z] shape notation, -1 for an unknown dimension."""
    if shape is None:
        return "[?]"
    return "[" + ",".join(str(-1 if d is None else d) for d in shape) + "]"


def read_meta_graph(path: Path, tag: str = SERVING_TAG) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraphDef tagged 'serve' in <path>/saved_model.pb."""
    saved_model = saved_model_pb2.SavedModel.FromString((path / SAVED_MODEL_FILE).read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if tag in meta_graph.meta_info_def.tags:
            return meta_graph
    raise ServingError(
        "NOT_FOUND", f"Could not find meta graph def matching supplied tags: {{ {tag} }}"
    )


_EAGER_PREFIX = re.compile(
    r"^Graph execution error:\s*(?:Detected at node .*? defined at \(most recent call last\):"
    r"\n(?:.*\n)*?(?:<stack traces unavailable>\n)?)?",
)
_EAGER_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\]\s*$")


_EAGER_DTYPE = re.compile(
    r"cannot compute \S+ as input #(\d+)\(zero-based\) was expected to be a (\w+) tensor "
    r"but is a (\w+) tensor"
)


def session_message(message: str) -> str:
    """A kernel's error as Session::Run words it: without eager Python's frame and op name.

    A fed tensor of the wrong dtype is FunctionCallFrame::SetArgs' "Expects arg[0] to be
    uint8 but float is provided".
    """
    message = _EAGER_SUFFIX.sub("", _EAGER_PREFIX.sub("", message, count=1))
    if match := _EAGER_DTYPE.search(message):
        index, expected, given = match.groups()
        return f"Expects arg[{index}] to be {expected} but {given} is provided"
    return message


class Servable:
    """A loaded model version. Immutable after loading, so any thread may call run()."""

    def __init__(self, name: str, version: int, path: Path) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.meta_graph = read_meta_graph(path)
        self._loaded = tf.saved_model.load(str(path), tags=[SERVING_TAG])
        self._functions = dict(self._loaded.signatures)
        self.signatures = {
            key: Signature(
                key,
                {k: TensorSpec.from_proto(v) for k, v in sig.inputs.items()},
                {k: TensorSpec.from_proto(v) for k, v in sig.outputs.items()},
            )
            for key, sig in self.meta_graph.signature_def.items()
        }

    def signature(self, name: str) -> Signature:
        """The named signature ('' means serving_default), or TF Serving's 400 error."""
        key = name or DEFAULT_SIGNATURE
        try:
            return self.signatures[key]
        except KeyError:
            raise invalid_argument(
                f'Serving signature name: "{key}" not found in signature def'
            ) from None

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a signature on arrays already converted to its input dtypes."""
        signature = self.check_inputs(signature_name, inputs)
        function = self._functions.get(signature.name)
        if function is None:
            raise invalid_argument(f"Signature {signature.name} cannot be run for prediction")
        try:
            result = function(**{k: tf.convert_to_tensor(v) for k, v in inputs.items()})
        except (tf.errors.OpError, TypeError, ValueError) as exc:
            error = from_exception(exc)
            if error.code == "UNKNOWN":
                error = invalid_argument(error.message)
            raise ServingError(error.code, session_message(error.message)) from exc
        return {key: value.numpy() for key, value in result.items()}

    def check_inputs(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> Signature:
        """The signature, if `inputs` name its inputs; else TF Serving's 400.

        predict_util.cc's VerifyRequestInputsSize, then saved_model::GetInputValues (no
        signature here has defaults). Shapes are not checked: the graph decides. Separate
        from run() so the batcher refuses a bad request on its own, before it could fail a
        whole batch of other clients' requests.
        """
        signature = self.signature(signature_name)
        expected = signature.inputs
        if len(inputs) != len(expected):
            sent, wanted = sorted(inputs), sorted(expected)
            raise invalid_argument(
                f"input size does not match signature: {len(inputs)}!={len(expected)} "
                f"len({{{','.join(sent)}}}) != len({{{','.join(wanted)}}}). Sent extra: "
                f"{{{','.join(k for k in sent if k not in expected)}}}. Missing but required: "
                f"{{{','.join(k for k in wanted if k not in inputs)}}}."
            )
        for alias in sorted(expected):
            if alias not in inputs:
                raise invalid_argument(
                    f"Signature input alias: {alias}(feed name: {expected[alias].feed_name}) "
                    "not found in request and no default value provided. Inputs expected to "
                    f"be in the request {{{','.join(sorted(inputs))}}}, or default input "
                    "alias set: "
                )
        return signature
