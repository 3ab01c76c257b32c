"""Does a version on disk carry the contract signature? Read from saved_model.pb, not loaded.

The function sends every version the same request and reads the same outputs, so a
version that differs (another input name, float pixels, no `digit`) would fail every
request routed to it. Checking the protos takes milliseconds and needs no TensorFlow
runtime, so it runs before a version is ever offered to the model server.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from recognizer import contract
from serving.config import resolve_base_path
from serving.repository import scan_versions

SERVE_TAG = "serve"


def _protos(tensors: dict[str, contract.Tensor]) -> dict[str, tuple[int, tuple[int, ...]]]:
    """The contract's tensors as the protos spell them: name -> (DataType, shape)."""
    return {
        name: (tf.as_dtype(tensor.dtype).as_datatype_enum, tensor.shape)
        for name, tensor in tensors.items()
    }


INPUTS, OUTPUTS = _protos(contract.INPUTS), _protos(contract.OUTPUTS)


def contract_problems(saved_model_pb: bytes) -> list[str]:
    """What keeps a serialized SavedModel from meeting the contract; empty when it does."""
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(saved_model_pb)
    except DecodeError as error:
        return [f"saved_model.pb is not a SavedModel ({error})"]
    graphs = [g for g in saved_model.meta_graphs if SERVE_TAG in g.meta_info_def.tags]
    if not graphs:
        return [f"no meta graph is tagged {SERVE_TAG!r}"]
    signature = graphs[0].signature_def.get(contract.SIGNATURE)
    if signature is None:
        return [f"no {contract.SIGNATURE!r} signature"]
    problems = []
    if set(signature.inputs) != set(INPUTS):
        problems.append(f"inputs are {sorted(signature.inputs)}, not {sorted(INPUTS)}")
    for name, (dtype, shape) in INPUTS.items():
        if name in signature.inputs:
            problems.extend(_tensor_problems("input", name, signature.inputs[name], dtype, shape))
    for name, (dtype, shape) in OUTPUTS.items():
        if name not in signature.outputs:
            problems.append(f"no output {name!r}")
        else:
            problems.extend(_tensor_problems("output", name, signature.outputs[name], dtype, shape))
    return problems


def _tensor_problems(
    kind: str, name: str, info: meta_graph_pb2.TensorInfo, dtype: int, shape: tuple[int, ...]
) -> list[str]:
    problems = []
    if info.dtype != dtype:
        problems.append(
            f"{kind} {name!r} is {types_pb2.DataType.Name(info.dtype)}, "
            f"not {types_pb2.DataType.Name(dtype)}"
        )
    dims = None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
    if dims != shape:
        problems.append(f"{kind} {name!r} has shape {_shape(dims)}, not {_shape(shape)}")
    return problems


def _shape(dims: tuple[int, ...] | None) -> str:
    return "unknown" if dims is None else "[" + ", ".join(map(str, dims)) + "]"


def versions_on_disk(base_path: str, config_file: Path, models_dir: Path) -> dict[int, Path]:
    """Complete version directories, found the way the model server finds them."""
    directory = resolve_base_path(
        base_path, config_dir=config_file.resolve().parent, models_dir=models_dir
    )
    return scan_versions(directory)


def check_version(directory: Path) -> list[str]:
    """Contract problems of the version in `directory` (unreadable counts as a problem)."""
    try:
        return contract_problems((directory / "saved_model.pb").read_bytes())
    except OSError as error:
        return [f"cannot read {directory / 'saved_model.pb'}: {error.strerror}"]
