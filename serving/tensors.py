"""JSON <-> tensors for :predict, as TF Serving's util/json_tensor.cc does it.

Row ("instances") and columnar ("inputs") requests become numpy arrays of the
signature's dtypes with json_tensor.cc's rules: a float input takes any JSON number
(rounded to float32, so 1e300 is inf), an int8/16/32 or uint8 input any integer that
fits int32 (cast, so 256 is 0 and -1 is 255 for uint8), int64/uint32/uint64 their
own ranges. No shape is checked against the signature: the graph decides, as
Session::Run does in TF Serving. Each instance must have the first one's value count
and then its shape. The fast path is one numpy conversion; a request that fails it is
walked value by value to name the offending value the way TF Serving does.

`strict=True` (the dev server's --strict_inputs, off by default) refuses instead what
TF Serving would wrap, round or leave to the graph: integers out of the dtype's range,
numbers a float input cannot hold exactly, shapes the signature does not accept.

Outputs become "predictions" or "outputs" through rapidjson's PrettyWriter layout.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from recognizer.model_client import uint8_json
from serving import rjson
from serving.errors import ServingError, invalid_argument
from serving.servable import Signature, TensorSpec, format_shape

ROW = "row"
COLUMNAR = "columnar"

INT32 = (-(2**31), 2**31 - 1)
# Which JSON integers each dtype takes (rapidjson's IsInt, IsInt64, IsUint, IsUint64).
_INT_RANGE = {
    "int8": INT32,
    "int16": INT32,
    "int32": INT32,
    "uint8": INT32,
    "int64": (rjson.INT64_MIN, rjson.INT64_MAX),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, rjson.UINT64_MAX),
}
_FLOATS = ("float", "double")
_CONVERTIBLE = (*_INT_RANGE, *_FLOATS, "bool", "string")


def _debug(value: Any) -> str:
    return rjson.debug_string(value)


def _format_error(value: Any, text: str) -> ServingError:
    return invalid_argument(f"JSON Value: {_debug(value)} {text}")


def _status_text(error: ServingError) -> str:
    """absl::Status::ToString(): 'INVALID_ARGUMENT: message'."""
    return f"{error.code}: {error.message}"


def parse_body(body: bytes) -> tuple[dict[str, Any], str]:
    """Parse a :predict (or :classify/:regress) body into (document, signature_name)."""
    doc = rjson.parse(body)
    if not isinstance(doc, dict):
        raise _format_error(doc, "Is not object")
    signature_name = doc.get("signature_name", "")
    if not isinstance(signature_name, str | bytes):
        raise _format_error(
            doc, "not formatted correctly. 'signature_name' key must be a string value."
        )
    if isinstance(signature_name, bytes):
        signature_name = signature_name.decode("utf-8", "surrogateescape")
    return doc, signature_name


# The function's :predict body (model_client.predict_body): one named input of 0-255
# integers, compact. Read with numpy instead of a JSON document of Python ints, and only
# when it is exactly what model_client writes for that array (its brackets and commas
# those of the array's shape, no leading zeros), so it is the document json would read.
_COLUMNAR_HEAD = re.compile(rb'\{"signature_name":"(\w*)","inputs":\{"(\w+)":\[')
_ZERO, _NINE = ord("0"), ord("9")


def parse_predict_body(body: bytes) -> tuple[dict[str, Any], str]:
    """parse_body for :predict, with the fast path for a compact columnar body of uint8s."""
    head = _COLUMNAR_HEAD.match(body, 0, 200)
    array = None if head is None or not body.endswith(b"}}") else _uint8s(body[head.end() - 1 : -2])
    if array is None:
        return parse_body(body)
    signature_name, name = head[1].decode(), head[2].decode()
    return {"signature_name": signature_name, "inputs": {name: array}}, signature_name


def _uint8s(text: bytes) -> np.ndarray | None:
    """The array `text` is uint8_json of, or None."""
    ndim = len(text) - len(text.lstrip(b"["))
    first = text.find(b"]")
    if ndim == 0 or first <= ndim:
        return None
    shape = [text[ndim:first].count(b",") + 1]
    for depth in range(1, ndim):
        end = text.find(b"]" * (depth + 1))
        shape.insert(0, text[:end].count(b"]" * depth + b",") + 1)
    chars = np.frombuffer(text, dtype=np.uint8)
    digit = (chars >= _ZERO) & (chars <= _NINE)
    after = np.empty_like(digit)  # the character before each one is a digit
    after[0], after[1:] = False, digit[:-1]
    starts = np.flatnonzero(digit & ~after)
    if starts.size != math.prod(shape):
        return None
    # The text with each number's first digit as "0" and its other digits gone.
    skeleton = np.where(digit, _ZERO, chars)[~(digit & after)].tobytes()
    if skeleton != _skeleton(tuple(shape)):
        return None
    values = chars[starts].astype(np.int64) - _ZERO
    more = np.ones(starts.size, dtype=bool)
    for place in (1, 2, 3):
        at = np.minimum(starts + place, len(chars) - 1)
        more &= digit[at] & (starts + place < len(chars))
        if place == 3:
            if more.any():  # four digits or more: not a uint8
                return None
            break
        if place == 1 and (more & (values == 0)).any():  # a leading zero: not JSON
            return None
        values = np.where(more, values * 10 + chars[at] - _ZERO, values)
    if values.max() > 255:
        return None
    return values.astype(np.uint8).reshape(shape)


@functools.lru_cache(maxsize=16)
def _skeleton(shape: tuple[int, ...]) -> bytes:
    return uint8_json(np.zeros(shape, dtype=np.uint8))


def is_b64(value: Any) -> bool:
    """IsValBase64Object: an object whose only member is "b64", a string."""
    return (
        isinstance(value, dict)
        and rjson.member_count(value) == 1
        and isinstance(value.get("b64"), str | bytes)
    )


def request_tensors(
    doc: Mapping[str, Any],
    signature: Signature,
    *,
    requested_signature: str = "",
    may_contain_bools: bool = True,
    strict: bool = False,
) -> tuple[str, dict[str, np.ndarray]]:
    """Turn 'instances' or 'inputs' into named arrays; returns (format, arrays)."""
    specs = signature.inputs
    if not specs:
        raise invalid_argument(
            f"Failed to get input map for signature: {requested_signature or 'DEFAULT'}"
        )
    if "instances" in doc:
        if "inputs" in doc:
            raise _format_error(
                doc,
                "Not formatted correctly expecting only one of 'inputs' or 'instances' keys "
                "to exist ",
            )
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise _format_error(doc, "Expecting 'instances' to be an list/array")
        if not instances:
            raise _format_error(doc, "No values in 'instances' array")
        arrays = _Instances(specs, may_contain_bools, strict).convert(instances)
        fmt = ROW
    elif "inputs" in doc:
        arrays = _from_inputs(doc["inputs"], specs, may_contain_bools, strict)
        fmt = COLUMNAR
    else:
        raise invalid_argument("Missing 'inputs' or 'instances' key")
    if strict:
        _check_shapes(arrays, signature)
    return fmt, arrays


def _first_name(specs: Mapping[str, TensorSpec]) -> str:
    # tensorinfo_map.begin(): the only input, when there is one.
    return min(specs)


class _Instances:
    """FillTensorMapFromInstancesList with AddInstanceItem's size-then-shape checks."""

    def __init__(
        self, specs: Mapping[str, TensorSpec], may_contain_bools: bool, strict: bool
    ) -> None:
        self.specs = specs
        self.may_contain_bools = may_contain_bools
        self.strict = strict
        self.values: dict[str, list[Any]] = {}
        self.sizes: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    def convert(self, instances: list[Any]) -> dict[str, np.ndarray]:
        specs = self.specs
        first = instances[0]
        if not isinstance(first, dict) and len(specs) > 1:
            raise invalid_argument(
                "instances is a plain list, but expecting list of objects as multiple input "
                "tensors required as per tensorinfo_map"
            )
        objects = isinstance(first, dict) and not is_b64(first)
        if not objects:
            name = _first_name(specs)
            fast = _fast_array(instances, specs[name], self.may_contain_bools, self.strict)
            if fast is not None:
                return {name: fast}
        names = sorted(specs)
        if objects and all(
            type(item) is dict and item.keys() == specs.keys() for item in instances
        ):
            # Every instance names every input once: stack each input, then one conversion.
            arrays = {}
            for name in names:
                column = [item[name] for item in instances]
                fast = _fast_array(column, specs[name], self.may_contain_bools, self.strict)
                if fast is None:
                    break
                arrays[name] = fast
            else:
                return arrays
        for index, item in enumerate(instances):
            item_is_object = isinstance(item, dict) and not is_b64(item)
            if objects:
                if not item_is_object:
                    raise invalid_argument(
                        f"Expecting object but got list at item {index} of input list"
                    )
                keys = set()
                for key, value in rjson.members(item):
                    keys.add(key)
                    try:
                        self._add(value, key)
                    except ServingError as error:
                        raise invalid_argument(
                            f"Failed to process element: {index} key: {key} of 'instances' "
                            f"list. Error: {_status_text(error)}"
                        ) from None
                if keys != set(names):
                    raise invalid_argument(
                        f"Failed to process element: {index} of 'instances' list. JSON object: "
                        f"{_debug(item)} keys must be equal to: {','.join(names)}"
                    )
            else:
                if item_is_object:
                    raise invalid_argument(
                        f"Expecting value/list but got object at item {index} of input list"
                    )
                try:
                    self._add(item, _first_name(specs))
                except ServingError as error:
                    raise invalid_argument(
                        f"Failed to process element: {index} of 'instances' list. "
                        f"Error: {_status_text(error)}"
                    ) from None
        return {
            name: _assemble(values, (len(instances), *self.shapes[name]), self.specs[name])
            for name, values in self.values.items()
        }

    def _add(self, item: Any, name: str) -> None:
        spec = self.specs.get(name)
        if spec is None:
            raise invalid_argument(f"JSON object: does not have named input: {name}")
        shape = _dense_shape(item)
        leaves: list[Any] = []
        _fill(item, 0, shape, spec, leaves, self.strict)
        self.values.setdefault(name, []).extend(leaves)
        if name not in self.sizes:
            self.sizes[name], self.shapes[name] = len(leaves), shape
        elif self.sizes[name] != len(leaves):
            raise invalid_argument(
                f"Expecting tensor size: {self.sizes[name]} but got: {len(leaves)}"
            )
        elif self.shapes[name] != shape:
            raise invalid_argument(
                f"Expecting shape {format_shape(self.shapes[name])} but got: {format_shape(shape)}"
            )


def _from_inputs(
    value: Any, specs: Mapping[str, TensorSpec], may_contain_bools: bool, strict: bool
) -> dict[str, np.ndarray]:
    """FillTensorMapFromInputsMap: one plain value/list, or an object of named inputs."""
    if not isinstance(value, dict) or is_b64(value):
        if len(specs) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        name = _first_name(specs)
        return {name: _columnar(value, specs[name], may_contain_bools, strict)}
    arrays = {}
    for name in sorted(specs):
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = _columnar(value[name], specs[name], may_contain_bools, strict)
    return arrays


def _columnar(value: Any, spec: TensorSpec, may_contain_bools: bool, strict: bool) -> np.ndarray:
    fast = _fast_array(value, spec, may_contain_bools, strict)
    if fast is not None:
        return fast
    if isinstance(value, np.ndarray):  # parse_predict_body's: as json would have read it
        value = value.tolist()
    shape = _dense_shape(value)
    leaves: list[Any] = []
    _fill(value, 0, shape, spec, leaves, strict)
    return _assemble(leaves, shape, spec)


def _dense_shape(value: Any) -> tuple[int, ...]:
    """GetDenseTensorShape: the lengths along the first element at each level."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _fill(
    value: Any, level: int, shape: tuple[int, ...], spec: TensorSpec, out: list[Any], strict: bool
) -> None:
    """FillTensorProto: every leaf at the tensor's rank, every list of its level's size."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(
                f"JSON Value: {_debug(value)} found at incorrect level: {level + 1} "
                f"in the JSON DOM. Expected at level: {rank}"
            )
        if isinstance(value, dict):
            if spec.dtype_name != "string":
                raise _type_error(value, spec)
            out.append(_base64(value))
        else:
            out.append(_leaf(value, spec, strict))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, level + 1, shape, spec, out, strict)


def _type_error(value: Any, spec: TensorSpec) -> ServingError:
    return invalid_argument(
        f"JSON Value: {_debug(value)} Type: {rjson.json_type(value)} "
        f"is not of expected type: {spec.dtype_name}"
    )


def _base64(value: dict) -> bytes:
    if not is_b64(value):
        raise _format_error(value, "not formatted correctly for base64 data")
    text = value["b64"]
    try:
        if isinstance(text, str):
            text = text.encode("ascii")
        # absl::Base64Unescape takes the standard alphabet with or without padding.
        return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def _leaf(value: Any, spec: TensorSpec, strict: bool) -> Any:
    """AddValueToTensor for one JSON value (lists and objects are handled by the caller)."""
    name = spec.dtype_name
    if name not in _CONVERTIBLE:
        raise ServingError(
            "UNIMPLEMENTED", f"Conversion of JSON Value: {_debug(value)} to type: {name}"
        )
    if name == "bool":
        if isinstance(value, bool):
            return value
        raise _type_error(value, spec)
    if name == "string":
        if isinstance(value, str):
            return value.encode("utf-8", "surrogateescape")
        if isinstance(value, bytes):
            return value
        raise _type_error(value, spec)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(value, spec)
    if name in _FLOATS:
        if strict:
            _check_exact(value, spec)
        return value
    low, high = _INT_RANGE[name]
    if not isinstance(value, int) or not low <= value <= high:
        raise _type_error(value, spec)
    if strict:
        info = np.iinfo(spec.dtype)
        if not info.min <= value <= info.max:
            raise invalid_argument(
                f"JSON Value: {value} Type: Number is out of range for type: {name} "
                f"[{info.min}, {info.max}] (--strict_inputs)"
            )
    return value


def _check_exact(value: int | float, spec: TensorSpec) -> None:
    """--strict_inputs: refuse a number the float input would not hold exactly."""
    if isinstance(value, int):
        ok = abs(value) <= (1 << (np.finfo(spec.dtype).nmant + 1))
    else:
        ok = not np.isfinite(value) or abs(value) <= np.finfo(spec.dtype).max
    if not ok:
        raise invalid_argument(
            f"Cannot convert JSON value: {_debug(value)} to {spec.dtype_name} without loss "
            "of precision (--strict_inputs)"
        )


def _assemble(leaves: list[Any], shape: tuple[int, ...], spec: TensorSpec) -> np.ndarray:
    """The tensor Tensor::FromProto makes of the values: cast to the dtype (ints wrap)."""
    count = int(np.prod(shape, dtype=np.int64))
    if len(leaves) != count and leaves:  # FromProto: extra values dropped, the last repeated
        leaves = (leaves + [leaves[-1]] * count)[:count]
    if spec.dtype_name == "string":
        array = np.empty(len(leaves), dtype=object)
        array[:] = leaves
        return array.reshape(shape)
    if not leaves:
        return np.zeros(shape, dtype=spec.dtype)
    if spec.dtype_name in _FLOATS:
        with np.errstate(over="ignore"):
            # GetFloat(): an integer becomes a double first, then a float.
            return np.array(leaves, dtype=np.float64).astype(spec.dtype).reshape(shape)
    if spec.dtype_name == "uint64":
        return np.array(leaves, dtype=np.uint64).reshape(shape)
    return np.array(leaves, dtype=np.int64).astype(spec.dtype).reshape(shape)


def _fast_array(
    value: Any, spec: TensorSpec, may_contain_bools: bool, strict: bool
) -> np.ndarray | None:
    """The tensor in one numpy conversion, or None when values must be checked one by one."""
    name = spec.dtype_name
    if name == "string" or name not in _CONVERTIBLE or not isinstance(value, list | np.ndarray):
        return None
    try:
        array = np.array(value)
    except (ValueError, TypeError, OverflowError):
        return None
    kind = array.dtype.kind
    if kind not in "biuf" or array.ndim == 0:
        return None
    if array.size == 0:
        return np.zeros(array.shape, dtype=spec.dtype)
    if name == "bool":
        return array if kind == "b" else None
    if kind == "b" or (may_contain_bools and kind in "iu"):
        return None  # JSON true/false may hide among the integers: check each value.
    if name in _FLOATS:
        if may_contain_bools:
            return None
        if strict and not _exact_in_float(array, spec):
            return None
        with np.errstate(over="ignore"):
            return array.astype(np.float64).astype(spec.dtype)
    if kind not in "iu":
        return None
    low, high = _INT_RANGE[name]
    if int(array.min()) < low or int(array.max()) > high:
        return None
    if strict:
        info = np.iinfo(spec.dtype)
        if int(array.min()) < info.min or int(array.max()) > info.max:
            return None
    if name == "uint64":
        return array.astype(np.uint64)
    return array.astype(np.int64).astype(spec.dtype)


def _exact_in_float(array: np.ndarray, spec: TensorSpec) -> bool:
    if array.dtype.kind in "iu":
        return bool(np.abs(array).max() <= (1 << (np.finfo(spec.dtype).nmant + 1)))
    finite = array[np.isfinite(array)]
    return finite.size == 0 or bool(np.abs(finite).max() <= np.finfo(spec.dtype).max)


def _check_shapes(arrays: Mapping[str, np.ndarray], signature: Signature) -> None:
    """--strict_inputs: refuse a shape the signature does not accept (TF Serving does not)."""
    for key, spec in signature.inputs.items():
        if key in arrays and not spec.accepts_shape(tuple(arrays[key].shape)):
            raise invalid_argument(
                f'Input "{key}" has shape {format_shape(arrays[key].shape)} but signature '
                f'"{signature.name}" expects {spec.dtype_name} {format_shape(spec.shape)} '
                "(--strict_inputs)"
            )


# ------------------------------------------------------------------- outputs
def output_dtype_name(array: np.ndarray) -> str:
    """DataTypeString of an output array's dtype."""
    if array.dtype.kind in "OSU":
        return "string"
    return _NUMPY_DTYPE_NAMES.get(array.dtype.str[1:], str(array.dtype))


_NUMPY_DTYPE_NAMES = {
    "f4": "float",
    "f8": "double",
    "f2": "half",
    "i1": "int8",
    "i2": "int16",
    "i4": "int32",
    "i8": "int64",
    "u1": "uint8",
    "u2": "uint16",
    "u4": "uint32",
    "u8": "uint64",
    "b1": "bool",
    "c8": "complex64",
    "c16": "complex128",
}


def _scalar_texts(name: str, array: np.ndarray) -> list[str] | None:
    """AddSingleValueAndAdvance's text for every value; None for strings written as b64."""
    dtype = output_dtype_name(array)
    flat = array.ravel()
    if dtype in _FLOATS:
        return rjson.decimal_texts(flat)
    if dtype in _INT_RANGE:
        return [str(v) for v in flat.tolist()]
    if dtype == "bool":
        return ["true" if v else "false" for v in flat.tolist()]
    if dtype == "string":
        if name.endswith("_bytes"):
            return None
        return [rjson.quote(_as_bytes(v)) for v in flat.tolist()]
    raise invalid_argument(f"Failed to write JSON value for tensor type: {dtype}")


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


class _TensorWriter:
    """AddTensorValues: a tensor's values from dimension `start` on, nested by its shape."""

    def __init__(self, writer: rjson.PrettyWriter, name: str, array: np.ndarray) -> None:
        self.writer = writer
        self.array = array
        self.texts = _scalar_texts(name, array)
        self.flat = array.ravel().tolist() if self.texts is None else None
        self.offset = 0

    def write(self, start: int) -> None:
        shape = self.array.shape
        if start > len(shape) - 1:
            self._single()
            return
        if start == len(shape) - 1 and self.texts is not None:
            count = shape[start]
            self.writer.array_of(self.texts[self.offset : self.offset + count])
            self.offset += count
            return
        self.writer.start(array=True)
        for _ in range(shape[start]):
            if start == len(shape) - 1:
                self._single()
            else:
                self.write(start + 1)
        self.writer.end()

    def _single(self) -> None:
        if self.texts is not None:
            self.writer.scalar(self.texts[self.offset])
        else:  # a "_bytes" string tensor: {"b64": "..."}
            assert self.flat is not None
            encoded = base64.b64encode(_as_bytes(self.flat[self.offset])).decode("ascii")
            self.writer.start(array=False)
            self.writer.key("b64")
            self.writer.scalar(rjson.quote(encoded))
            self.writer.end()
        self.offset += 1


def render_response(outputs: Mapping[str, np.ndarray], fmt: str) -> bytes:
    """MakeJsonFromTensors: the JSON body of a successful :predict, in the request's format."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    writer = rjson.PrettyWriter()
    writer.start(array=False)
    if fmt == COLUMNAR:
        writer.key("outputs")
        several = len(names) > 1
        if several:
            writer.start(array=False)
        for name in names:
            if several:
                writer.key(name)
            _TensorWriter(writer, name, np.asarray(outputs[name])).write(0)
        if several:
            writer.end()
    else:
        batch = -1
        for name in names:
            array = outputs[name]
            if array.ndim == 0:
                raise invalid_argument(f"Tensor name: {name} has no shape information ")
            if batch >= 0 and array.shape[0] != batch:
                raise invalid_argument(
                    f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} "
                    f"expecting: {batch}"
                )
            batch = array.shape[0]
        tensors = {name: _TensorWriter(writer, name, np.asarray(outputs[name])) for name in names}
        writer.key("predictions")
        writer.start(array=True)
        several = len(names) > 1
        for _ in range(batch):
            if several:
                writer.start(array=False)
            writer.single_line_arrays = True
            for name in names:
                if several:
                    writer.key(name)
                tensors[name].write(1)
            writer.single_line_arrays = False
            if several:
                writer.end()
        writer.end()
    writer.end()
    return writer.text().encode("utf-8", "surrogateescape")
