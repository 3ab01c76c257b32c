"""One loaded SavedModel version: its signature defs and a way to run them.

Signature defs are read from saved_model.pb with the protos (not from the
loaded object), because that is what TF Serving's metadata and input
conversion are based on: dtypes, shapes and every signature, init op included.

A version runs as TF Serving runs it: the MetaGraphDef is loaded into a graph and a
Session (the SavedModelBundle of loader.h), and a request feeds the signature's input
tensors and fetches its output tensors by name, as predict_util.cc's RunPredict hands
them to Session::Run. Each feed/fetch combination becomes a Session callable once;
calling one costs tens of microseconds of Python, where calling the eager signature
function costs several hundred (docs/performance.md, "Model server speed"). The
session's thread pools are set by SessionOptions (--tensorflow_intra_op_parallelism,
--tensorflow_inter_op_parallelism).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, saved_model_pb2

from serving.errors import ServingError, from_exception, invalid_argument

SERVING_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"
SAVED_MODEL_FILE = "saved_model.pb"


@dataclass(frozen=True)
class SessionOptions:
    """The ConfigProto thread settings of every session this process loads.

    TF Serving's --tensorflow_intra_op_parallelism and --tensorflow_inter_op_parallelism
    (0: TensorFlow picks, one thread per core). A negative inter-op value runs each
    Session::Run on the calling thread (ConfigProto.inter_op_parallelism_threads < 0),
    which spares a thread hand-off per request: on a small graph like this one the
    hand-offs cost more than the model (docs/performance.md).
    """

    intra_op_parallelism: int = 0
    inter_op_parallelism: int = 0

    def config_proto(self) -> config_pb2.ConfigProto:
        return config_pb2.ConfigProto(
            intra_op_parallelism_threads=self.intra_op_parallelism,
            inter_op_parallelism_threads=self.inter_op_parallelism,
        )


_session_options = SessionOptions()


def set_session_options(options: SessionOptions) -> None:
    """Thread settings for the sessions loaded from now on (the server sets them at start)."""
    global _session_options
    _session_options = options


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

    def __init__(
        self, name: str, version: int, path: Path, options: SessionOptions | None = None
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.meta_graph = read_meta_graph(path)
        self.signatures = {
            key: Signature(
                key,
                {k: TensorSpec.from_proto(v) for k, v in sig.inputs.items()},
                {k: TensorSpec.from_proto(v) for k, v in sig.outputs.items()},
            )
            for key, sig in self.meta_graph.signature_def.items()
        }
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(
            graph=self._graph, config=(options or _session_options).config_proto()
        )
        with self._graph.as_default(), _quiet_deprecation():
            tf.compat.v1.saved_model.loader.load(self._session, [SERVING_TAG], str(path))
        self._callables: dict[tuple[str, tuple[str, ...]], Callable[..., list]] = {}
        self._callables_lock = threading.Lock()

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
        if signature.name.startswith("__saved_model_init_op"):
            raise invalid_argument(f"Signature {signature.name} cannot be run for prediction")
        aliases = tuple(sorted(inputs))
        feeds = []
        for index, alias in enumerate(aliases):
            array = np.asarray(inputs[alias])
            expected = signature.inputs[alias]
            if array.dtype.kind in "OSU" and expected.dtype.kind == "O":
                array = _as_object(array)
            elif array.dtype != expected.dtype:
                # FunctionCallFrame::SetArgs, as DirectSession::Run checks its feeds.
                given = "string" if array.dtype.kind in "OSU" else _numpy_type_name(array)
                raise invalid_argument(
                    f"Expects arg[{index}] to be {expected.dtype_name} but {given} is provided"
                )
            feeds.append(array)
        outputs = sorted(signature.outputs)
        run = self._callable(signature, aliases, outputs)
        try:
            values = run(*feeds)
        except (tf.errors.OpError, TypeError, ValueError) as exc:
            error = from_exception(exc)
            if error.code == "UNKNOWN":
                error = invalid_argument(error.message)
            raise ServingError(error.code, session_message(error.message)) from exc
        return dict(zip(outputs, values, strict=True))

    def _callable(
        self, signature: Signature, aliases: tuple[str, ...], outputs: list[str]
    ) -> Callable[..., list]:
        """Session::MakeCallable for these feeds and the signature's fetches, made once."""
        key = (signature.name, aliases)
        run = self._callables.get(key)
        if run is not None:
            return run
        with self._callables_lock:
            run = self._callables.get(key)
            if run is None:
                options = config_pb2.CallableOptions()
                options.feed.extend(signature.inputs[a].feed_name for a in aliases)
                options.fetch.extend(signature.outputs[o].feed_name for o in outputs)
                # Not make_callable(fetches, feed_list): that one casts fed arrays to the
                # placeholders' dtypes and refuses their shapes in Python, where TF
                # Serving's Session::Run takes the tensors as they are.
                run = self._session._make_callable_from_options(options)
                self._callables[key] = run
        return run

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


def _as_object(array: np.ndarray) -> np.ndarray:
    """A string tensor as the session takes it: an object array of bytes."""
    if array.dtype.kind == "O":
        return array
    result = np.empty(array.size, dtype=object)
    result[:] = [v.encode() if isinstance(v, str) else bytes(v) for v in array.ravel().tolist()]
    return result.reshape(array.shape)


def _numpy_type_name(array: np.ndarray) -> str:
    try:
        return data_type_string(tf.dtypes.as_dtype(array.dtype).as_datatype_enum)
    except TypeError:
        return str(array.dtype)


class _quiet_deprecation:
    """tf.compat.v1's loader warns that it is deprecated on every load; not news here."""

    def __enter__(self) -> None:
        self._logger = logging.getLogger("tensorflow")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc_info: object) -> None:
        self._logger.setLevel(self._level)
