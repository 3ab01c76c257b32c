"""JSON <-> tensor conversion for :predict, following TF Serving's json_tensor.cc.

Row ("instances") and columnar ("inputs") requests become numpy arrays of the
signature's dtypes; outputs become "predictions" or "outputs". The fast path is
one numpy conversion; only a request that fails it is walked value by value,
to name the offending value the way TF Serving does.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from serving.errors import ServingError, invalid_argument
from serving.servable import Signature, TensorSpec, format_shape

ROW = "row"
COLUMNAR = "columnar"
_SNIPPET_CHARS = 200


def _snippet(value: Any) -> str:
    """A JSON rendering of a value for error messages, cut short for big payloads."""
    try:
        text = json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _SNIPPET_CHARS else text[:_SNIPPET_CHARS] + "...(truncated)"


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _format_error(doc: Any, text: str) -> Exception:
    return invalid_argument(f"JSON Value: {_snippet(doc)} {text}")


def parse_body(body: bytes) -> tuple[dict[str, Any], str]:
    """Parse a :predict body into (document, signature_name) or raise a 400."""
    if not body.strip():
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except json.JSONDecodeError as exc:
        raise invalid_argument(f"JSON Parse error: {exc.msg} at offset: {exc.pos}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise invalid_argument(f"JSON Parse error: {exc}") from None
    if not isinstance(doc, dict):
        raise _format_error(doc, "Is not object")
    signature_name = doc.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise _format_error(
            doc, "not formatted correctly. 'signature_name' key must be a string value."
        )
    return doc, signature_name


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def request_tensors(
    doc: Mapping[str, Any], signature: Signature, *, may_contain_bools: bool = True
) -> tuple[str, dict[str, np.ndarray]]:
    """Turn 'instances' or 'inputs' into named arrays; returns (format, arrays)."""
    specs = signature.inputs
    if not specs:
        raise invalid_argument(f"Failed to get input map for signature: {signature.name}")
    if "instances" in doc and "inputs" in doc:
        raise _format_error(
            doc,
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ",
        )
    if "instances" in doc:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise _format_error(doc, "Excepting 'instances' to be an list/array")
        if not instances:
            raise _format_error(doc, "No values in 'instances' array")
        return ROW, _from_instances(instances, specs, may_contain_bools)
    if "inputs" in doc:
        return COLUMNAR, _from_inputs(doc["inputs"], specs, may_contain_bools)
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _from_instances(
    instances: list[Any], specs: Mapping[str, TensorSpec], may_contain_bools: bool
) -> dict[str, np.ndarray]:
    def is_object(value: Any) -> bool:
        return isinstance(value, dict) and not _is_b64(value)

    if not isinstance(instances[0], dict) and len(specs) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    if not is_object(instances[0]):
        for index, item in enumerate(instances):
            if is_object(item):
                raise invalid_argument(
                    f"Expecting value/list but got object at item {index} of input list"
                )
        (name,) = specs
        return {name: _to_array(instances, specs[name], may_contain_bools, row=True)}
    names = set(specs)
    for index, item in enumerate(instances):
        if not is_object(item):
            raise invalid_argument(f"Expecting object but got list at item {index} of input list")
        for key in item:
            if key not in specs:
                raise invalid_argument(
                    f"Failed to process element: {index} key: {key} of 'instances' list. "
                    f"Error: INVALID_ARGUMENT: JSON object: does not have named input: {key}"
                )
        if set(item) != names:
            raise invalid_argument(
                f"Failed to process element: {index} of 'instances' list. JSON object: "
                f"{_snippet(item)} keys must be equal to: {','.join(sorted(names))}"
            )
    return {
        name: _to_array([item[name] for item in instances], spec, may_contain_bools, row=True)
        for name, spec in specs.items()
    }


def _from_inputs(
    value: Any, specs: Mapping[str, TensorSpec], may_contain_bools: bool
) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or _is_b64(value):
        if len(specs) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        (name,) = specs
        return {name: _to_array(value, specs[name], may_contain_bools, row=False)}
    arrays = {}
    for name, spec in specs.items():
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = _to_array(value[name], spec, may_contain_bools, row=False)
    return arrays


def _to_array(value: Any, spec: TensorSpec, may_contain_bools: bool, *, row: bool) -> np.ndarray:
    """Convert nested JSON values to an array of the spec's dtype, strictly."""
    if spec.dtype.kind in "iufb":
        try:
            array = np.array(value)
        except (ValueError, TypeError, OverflowError):
            array = None
        if array is not None and array.dtype != object and _fast_ok(array, spec, may_contain_bools):
            return array.astype(spec.dtype, copy=False)
    # Slow path: name the first bad value the way TF Serving does (or convert strings).
    leaves: list[Any] = []
    if row:
        shape = _row_shape(value, spec, leaves)
    else:
        shape = _dense_shape(value)
        _collect(value, 0, shape, spec, leaves)
    if spec.dtype.kind in "iufb":
        return np.array(leaves, dtype=spec.dtype).reshape(shape)
    array = np.empty(len(leaves), dtype=object)
    array[:] = leaves
    return array.reshape(shape)


def _row_shape(instances: list[Any], spec: TensorSpec, leaves: list[Any]) -> tuple[int, ...]:
    """Collect each instance's values; all instances must have the first one's shape."""
    first: tuple[int, ...] | None = None
    for index, item in enumerate(instances):
        shape = _dense_shape(item)
        try:
            _collect(item, 0, shape, spec, leaves)
            if first is not None and shape != first:
                raise invalid_argument(
                    f"Expecting shape {format_shape(first)} but got: {format_shape(shape)}"
                )
        except ServingError as exc:
            raise invalid_argument(
                f"Failed to process element: {index} of 'instances' list. Error: {exc}"
            ) from None
        first = shape if first is None else first
    return (len(instances), *(first or ()))


def _fast_ok(array: np.ndarray, spec: TensorSpec, may_contain_bools: bool) -> bool:
    """Whether numpy's inferred array is a lossless, type-correct input for the spec."""
    target = spec.dtype
    if target.kind == "b":
        return array.dtype.kind == "b"
    if array.dtype.kind == "b" or (may_contain_bools and array.dtype.kind in "iuf"):
        return False  # JSON true/false may hide in a numeric array; check each value.
    if array.size == 0:
        return array.dtype.kind in "iuf"
    if target.kind in "iu":
        if array.dtype.kind not in "iu":
            return False
        info = np.iinfo(target)
        return bool(array.min() >= info.min and array.max() <= info.max)
    if target.kind == "f" and array.dtype.kind in "iuf":
        finfo = np.finfo(target)
        if array.dtype.kind in "iu":
            return bool(np.abs(array).max() <= _max_exact_int(target))
        finite = array[np.isfinite(array)]
        return finite.size == 0 or bool(np.abs(finite).max() <= finfo.max)
    return False


def _max_exact_int(target: np.dtype) -> int:
    # TF Serving's IsLosslessDecimal: an integer must fit the float's mantissa.
    return (1 << (np.finfo(target).nmant + 1)) - 1


def _dense_shape(value: Any) -> tuple[int, ...]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _collect(
    value: Any, level: int, shape: tuple[int, ...], spec: TensorSpec, out: list[Any]
) -> None:
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(
                f"JSON Value: {_snippet(value)} found at incorrect level: {level + 1} "
                f"in the JSON DOM. Expected at level: {rank}"
            )
        out.append(_leaf(value, spec))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}"
        )
    for item in value:
        _collect(item, level + 1, shape, spec, out)


def _leaf(value: Any, spec: TensorSpec) -> Any:
    kind = spec.dtype.kind
    name = spec.dtype_name
    type_error = invalid_argument(
        f"JSON Value: {_snippet(value)} Type: {_json_type(value)} is not of expected type: {name}"
    )
    if kind == "b":
        if isinstance(value, bool):
            return value
        raise type_error
    if kind in "iu":
        if isinstance(value, bool) or not isinstance(value, int):
            raise type_error
        info = np.iinfo(spec.dtype)
        if not info.min <= value <= info.max:
            raise invalid_argument(
                f"JSON Value: {value} Type: Number is out of range for type: {name} "
                f"[{info.min}, {info.max}]"
            )
        return value
    if kind == "f":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise type_error
        if isinstance(value, int):
            lossless = abs(value) <= _max_exact_int(spec.dtype)
        else:
            lossless = not math.isfinite(value) or abs(value) <= np.finfo(spec.dtype).max
        if not lossless:
            label = "float" if spec.dtype == np.float32 else "double"
            raise invalid_argument(
                f"Cannot convert JSON value: {_snippet(value)} to {label} "
                "without loss of precision."
            )
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict):
        if not _is_b64(value):
            raise invalid_argument(
                f"JSON Value: {_snippet(value)} not formatted correctly for base64 data"
            )
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise invalid_argument("Unable to base64 decode") from None
    raise type_error


def _jsonable(name: str, array: np.ndarray) -> Any:
    """Plain Python values for JSON; float32 as its shortest round-trip decimal."""
    if array.dtype.kind == "f" and array.dtype.itemsize < 8:
        return array.astype(str).astype(np.float64).tolist()
    if array.dtype.kind in "OSU":
        return np.vectorize(lambda v: _string_out(name, v), otypes=[object])(array).tolist()
    return array.tolist()


def _string_out(name: str, value: Any) -> Any:
    if isinstance(value, bytes):
        if name.endswith("_bytes"):
            return {"b64": base64.b64encode(value).decode("ascii")}
        return value.decode("utf-8", errors="replace")
    return value


def render_response(outputs: Mapping[str, np.ndarray], fmt: str) -> bytes:
    """The JSON body of a successful :predict, in the request's format."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if fmt == COLUMNAR:
        values = {name: _jsonable(name, outputs[name]) for name in names}
        body: Any = {"outputs": values[names[0]] if len(names) == 1 else values}
    else:
        batch = None
        for name in names:
            if outputs[name].ndim == 0:
                raise invalid_argument(f"Tensor name: {name} has no shape information ")
            size = outputs[name].shape[0]
            if batch is not None and size != batch:
                raise invalid_argument(
                    f"Tensor name: {name} has inconsistent batch size: {size} expecting: {batch}"
                )
            batch = size
        columns = {name: _jsonable(name, outputs[name]) for name in names}
        if len(names) == 1:
            body = {"predictions": columns[names[0]]}
        else:
            body = {
                "predictions": [
                    {name: columns[name][i] for name in names} for i in range(batch or 0)
                ]
            }
    return json.dumps(body, separators=(",", ":")).encode("utf-8")
