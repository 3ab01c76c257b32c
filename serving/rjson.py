"""JSON the way TF Serving's REST layer reads and writes it (rapidjson 1.1.0 underneath).

Reading follows util/json_tensor.cc's ParseJson: rapidjson's iterative parser with
NaN/Infinity allowed and parsing stopped after the root value (trailing bytes are
ignored), its error messages and byte offsets, a UTF-8 BOM skipped, string bytes taken
as they come (no UTF-8 validation). Most bodies go through Python's json module; only
one it rejects, or one where the two parsers could disagree (surrogate escapes, numbers
too big for a double), is read again by a byte-by-byte port of rapidjson's reader.

Values keep rapidjson's kinds: an integer literal outside [-2**63, 2**64) is a double;
a string that is not valid UTF-8 is bytes; an object with a repeated key is a dict of
the first values (FindMember finds the first) that keeps every member in `.members`.

Writing follows rapidjson's PrettyWriter (4-space indent, optionally one-line arrays,
its string escapes and double formatting) and WriteDecimal's float text: six
significant digits, or max_digits10 when those do not read back as the same value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from serving.errors import invalid_argument

# rapidjson/error/en.h
_MESSAGES = {
    "empty": "The document is empty.",
    "not_singular": "The document root must not be followed by other values.",
    "value_invalid": "Invalid value.",
    "miss_name": "Missing a name for object member.",
    "miss_colon": "Missing a colon after a name of object member.",
    "miss_comma_curly": "Missing a comma or '}' after an object member.",
    "miss_comma_bracket": "Missing a comma or ']' after an array element.",
    "bad_hex": "Incorrect hex digit after \\u escape in string.",
    "bad_surrogate": "The surrogate pair in string is invalid.",
    "bad_escape": "Invalid escape character in string.",
    "miss_quote": "Missing a closing quotation mark in string.",
    "bad_encoding": "Invalid encoding in string.",
    "too_big": "Number too big to be stored in double.",
    "miss_fraction": "Miss fraction part in number.",
    "miss_exponent": "Miss exponent in number.",
}

INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1
_WHITESPACE = b" \t\n\r"
# Bodies the fast path could read differently from rapidjson: surrogate escapes, long
# digit runs (integers past uint64, doubles past DBL_MAX), exponents of three digits.
_NEEDS_EXACT = re.compile(rb"\\u[dD][89a-fA-F]|[0-9]{20}|[eE][+-]?[0-9]{3}")
# The same test without running that regex over every byte (re has no literal to skip
# to, so it costs ~70 ns a byte, 11 ms on a 64-image body): digits become "0", and
# plain substring searches find each case; the regex only confirms a candidate.
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_CANDIDATES = (b"0" * 20, b"e000", b"E000", b"e+000", b"E+000", b"e-000", b"E-000")


def _needs_exact(body: bytes) -> bool:
    """bool(_NEEDS_EXACT.search(body)), fast."""
    if b"\\" in body:  # a \u escape may be a surrogate: the regex decides
        return _NEEDS_EXACT.search(body) is not None
    zeroed = body.translate(_DIGITS_TO_ZERO)
    return any(candidate in zeroed for candidate in _CANDIDATES)


class DupDict(dict):
    """An object with a repeated key: the first value of each key, and every member."""

    members: list[tuple[str, Any]]


def members(value: dict) -> list[tuple[str, Any]] | Iterable[tuple[str, Any]]:
    """An object's members in document order, repeated keys included."""
    return value.members if isinstance(value, DupDict) else value.items()


def member_count(value: dict) -> int:
    return len(value.members) if isinstance(value, DupDict) else len(value)


def _first_wins(pairs: list[tuple[str, Any]]) -> dict:
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    first = DupDict()
    for key, value in pairs:
        first.setdefault(key, value)
    first.members = list(pairs)
    return first


_DECODER = json.JSONDecoder(object_pairs_hook=_first_wins)


class ParseError(Exception):
    def __init__(self, code: str, offset: int) -> None:
        super().__init__(code)
        self.code = code
        self.offset = offset


def parse(body: bytes) -> Any:
    """The JSON document of a request body, or TF Serving's 'JSON Parse error' (400)."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    if not _needs_exact(body):
        try:
            text = body[_bom_length(body) :].decode("utf-8")
            start = len(text) - len(text.lstrip(" \t\n\r"))
            doc = _DECODER.raw_decode(text, start)[0]
            if isinstance(doc, dict | list):  # a scalar root may end where json stops early
                return doc
        except (ValueError, RecursionError):
            pass  # the exact reader names the error (or reads what json cannot)
    try:
        return _Reader(body).parse()
    except ParseError as error:
        raise invalid_argument(
            f"JSON Parse error: {_MESSAGES[error.code]} at offset: {error.offset}"
        ) from None


def _bom_length(body: bytes) -> int:
    # EncodedInputStream<UTF8<>, MemoryStream> drops EF, BB and BF one by one.
    position = 0
    for byte in (0xEF, 0xBB, 0xBF):
        if position < len(body) and body[position] == byte:
            position += 1
    return position


class _Reader:
    """rapidjson 1.1.0's GenericReader::IterativeParse, byte for byte.

    Flags: kParseIterativeFlag | kParseNanAndInfFlag | kParseStopWhenDoneFlag. Like
    MemoryStream, reading past the end (or reaching a NUL byte) yields '\\0'.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = _bom_length(data)

    def peek(self) -> int:
        return self.data[self.pos] if self.pos < len(self.data) else 0

    def take(self) -> int:
        if self.pos < len(self.data):
            self.pos += 1
            return self.data[self.pos - 1]
        return 0

    def consume(self, char: str) -> bool:
        if self.peek() == ord(char):
            self.pos += 1
            return True
        return False

    def skip_whitespace(self) -> None:
        data, pos = self.data, self.pos
        while pos < len(data) and data[pos] in _WHITESPACE:
            pos += 1
        self.pos = pos

    def parse(self) -> Any:
        # Each frame: [container, pending key or None, state after a member key].
        stack: list[list[Any]] = []
        self.skip_whitespace()
        if self.peek() == 0:
            raise ParseError("empty", self.pos)
        root: Any = None
        state = "start"  # start | object_initial | member_key | key_value | member_value |
        #                  member_delimiter | array_initial | element | element_delimiter
        while True:
            c = self.peek()
            if c == 0:
                raise ParseError(_END_ERRORS[state], self.pos)
            if state in ("start", "key_value", "array_initial", "element_delimiter"):
                if c == ord("]") and state == "array_initial":
                    self.take()
                    value, stack, state = self._close(stack)
                    if state == "finish":
                        return value
                elif c == ord("["):
                    self.take()
                    stack.append([[], None])
                    state = "array_initial"
                elif c == ord("{"):
                    self.take()
                    stack.append([{}, None, []])
                    state = "object_initial"
                elif c in _NOT_VALUE_TOKENS:
                    # HandleError(IterativeParsingStartState) says "empty" for these too.
                    raise ParseError("empty" if state == "start" else "value_invalid", self.pos)
                else:
                    value = self._scalar()
                    if not stack:
                        return value
                    state = self._add(stack, value)
            elif state in ("object_initial", "member_delimiter"):
                if c == ord("}") and state == "object_initial":
                    self.take()
                    root, stack, state = self._close(stack)
                    if state == "finish":
                        return root
                elif c == ord('"'):
                    stack[-1][1] = self._string(key=True)
                    state = "member_key"
                else:
                    raise ParseError("miss_name", self.pos)
            elif state == "member_key":
                if c != ord(":"):
                    raise ParseError("miss_colon", self.pos)
                self.take()
                state = "key_value"
            elif state == "member_value":
                if c == ord(","):
                    self.take()
                    state = "member_delimiter"
                elif c == ord("}"):
                    self.take()
                    root, stack, state = self._close(stack)
                    if state == "finish":
                        return root
                else:
                    raise ParseError("miss_comma_curly", self.pos)
            else:  # element
                if c == ord(","):
                    self.take()
                    state = "element_delimiter"
                elif c == ord("]"):
                    self.take()
                    root, stack, state = self._close(stack)
                    if state == "finish":
                        return root
                else:
                    raise ParseError("miss_comma_bracket", self.pos)
            self.skip_whitespace()

    @staticmethod
    def _add(stack: list[list[Any]], value: Any) -> str:
        frame = stack[-1]
        if isinstance(frame[0], list):
            frame[0].append(value)
            return "element"
        frame[2].append((frame[1], value))
        return "member_value"

    def _close(self, stack: list[list[Any]]) -> tuple[Any, list[list[Any]], str]:
        frame = stack.pop()
        value = frame[0] if isinstance(frame[0], list) else _first_wins(frame[2])
        if not stack:
            return value, stack, "finish"
        return value, stack, self._add(stack, value)

    def _scalar(self) -> Any:
        c = self.peek()
        if c == ord('"'):
            return self._string(key=False)
        for char, word, value in (
            ("n", b"null", None),
            ("t", b"true", True),
            ("f", b"false", False),
        ):
            if c == ord(char):
                self.take()
                for expected in word[1:]:
                    if self.peek() != expected:
                        raise ParseError("value_invalid", self.pos)
                    self.take()
                return value
        return self._number()

    def _hex4(self, escape_offset: int) -> int:
        codepoint = 0
        for _ in range(4):
            c = self.peek()
            if not (48 <= c <= 57 or 65 <= c <= 70 or 97 <= c <= 102):
                raise ParseError("bad_hex", escape_offset)
            codepoint = codepoint * 16 + int(chr(c), 16)
            self.take()
        return codepoint

    def _string(self, *, key: bool) -> Any:
        self.take()  # the opening quote
        out = bytearray()
        data = self.data
        while True:
            c = self.peek()
            if c == ord("\\"):
                escape_offset = self.pos
                self.take()
                e = self.peek()
                if e in _ESCAPES:
                    self.take()
                    out.append(_ESCAPES[e])
                elif e == ord("u"):
                    self.take()
                    codepoint = self._hex4(escape_offset)
                    if 0xD800 <= codepoint <= 0xDBFF:
                        if not (self.consume("\\") and self.consume("u")):
                            raise ParseError("bad_surrogate", escape_offset)
                        low = self._hex4(escape_offset)
                        if not 0xDC00 <= low <= 0xDFFF:
                            raise ParseError("bad_surrogate", escape_offset)
                        codepoint = ((codepoint - 0xD800) << 10 | (low - 0xDC00)) + 0x10000
                    # 1.1.0 encodes a lone low surrogate as it is (3 bytes, not UTF-8).
                    out += chr(codepoint).encode("utf-8", "surrogatepass")
                else:
                    raise ParseError("bad_escape", escape_offset)
            elif c == ord('"'):
                self.take()
                break
            elif c < 0x20:
                raise ParseError("miss_quote" if c == 0 else "bad_encoding", self.pos)
            else:
                # Copy the run of plain bytes at once.
                end = self.pos
                while end < len(data) and data[end] >= 0x20 and data[end] not in (0x22, 0x5C):
                    end += 1
                out += data[self.pos : end]
                self.pos = end
        raw = bytes(out)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", "surrogateescape") if key else raw

    def _number(self) -> Any:
        start = self.pos
        minus = self.consume("-")
        c = self.peek()
        digits_start = self.pos
        special: float | None = None
        if c == ord("0"):
            self.take()
        elif 49 <= c <= 57:
            while 48 <= self.peek() <= 57:
                self.take()
        elif c in (ord("I"), ord("N")):
            if self.consume("N") and self.consume("a") and self.consume("N"):
                special = math.nan
            elif self.consume("I") and self.consume("n") and self.consume("f"):
                special = -math.inf if minus else math.inf
                if self.peek() == ord("i") and not all(self.consume(ch) for ch in "inity"):
                    raise ParseError("value_invalid", self.pos)
            else:
                raise ParseError("value_invalid", self.pos)
        else:
            raise ParseError("value_invalid", self.pos)
        integer = self.data[digits_start : self.pos]
        fraction = b""
        if self.consume("."):
            if not 48 <= self.peek() <= 57:
                raise ParseError("miss_fraction", self.pos)
            begin = self.pos
            while 48 <= self.peek() <= 57:
                self.take()
            fraction = self.data[begin : self.pos]
        exponent = None
        if self.consume("e") or self.consume("E"):
            negative = False
            if self.consume("+"):
                pass
            elif self.consume("-"):
                negative = True
            if not 48 <= self.peek() <= 57:
                raise ParseError("miss_exponent", self.pos)
            begin = self.pos
            while 48 <= self.peek() <= 57:
                self.take()
            exponent = int(self.data[begin : self.pos])
            # Positive exponents past 308 less the fraction digits are refused.
            if not negative and exponent > 308 + _fraction_digits_used(integer, fraction, minus):
                raise ParseError("too_big", start)
            exponent = -exponent if negative else exponent
        if special is not None and not fraction and exponent is None:
            return special
        if special is not None:  # "NaN.5", "Infe2": rapidjson goes on with a zero significand
            integer = b"0"
        magnitude = int(integer)
        limit = 2**63 if minus else UINT64_MAX
        if not fraction and exponent is None:
            if magnitude <= limit:
                return -magnitude if minus else magnitude
            # Past 64 bits the digits are summed into a double, refused past DBL_MAX / 10.
            digits = integer.lstrip(b"0")
            if len(digits) >= 310 or (
                len(digits) == 309 and float(int(digits[:308])) >= 1.7976931348623157e307
            ):
                raise ParseError("too_big", start)
            return -float(magnitude) if minus else float(magnitude)
        text = (b"-" if minus else b"") + integer
        if fraction:
            text += b"." + fraction
        if exponent is not None:
            text += b"e" + str(exponent).encode()
        return float(text)


def _fraction_digits_used(integer: bytes, fraction: bytes, minus: bool) -> int:
    """-expFrac of rapidjson's ParseNumber: the fraction digits it folds into the significand."""
    limit = 2**63 if minus else UINT64_MAX
    if integer == b"0":
        significant, value = 0, 0
    elif int(integer) <= limit:
        significant, value = len(integer) - 1, int(integer)
    else:
        return 0  # already a double with 17+ significant digits: fraction digits are skipped
    used = 0
    digits = [d - 48 for d in fraction]
    index = 0
    while index < len(digits) and value <= 2**53 - 1:
        value = value * 10 + digits[index]
        used += 1
        index += 1
        if value:
            significant += 1
    positive = value > 0
    for digit in digits[index:]:
        if significant < 17:
            used += 1
            positive = positive or digit > 0
            if positive:
                significant += 1
    return used


_ESCAPES = {
    ord('"'): ord('"'),
    ord("\\"): ord("\\"),
    ord("/"): ord("/"),
    ord("b"): 8,
    ord("f"): 12,
    ord("n"): 10,
    ord("r"): 13,
    ord("t"): 9,
}
_NOT_VALUE_TOKENS = frozenset(b"]},:")
_END_ERRORS = {
    "start": "empty",
    "object_initial": "miss_name",
    "member_delimiter": "miss_name",
    "member_key": "miss_colon",
    "member_value": "miss_comma_curly",
    "key_value": "value_invalid",
    "array_initial": "value_invalid",
    "element_delimiter": "value_invalid",
    "element": "miss_comma_bracket",
}


# ------------------------------------------------------------------- writing
def json_type(value: Any) -> str:
    """rapidjson's type name, as json_tensor.cc's JsonTypeString spells it."""
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
    if isinstance(value, str | bytes):
        return "String"
    return "Number"


def quote(value: str | bytes) -> str:
    """A JSON string as rapidjson's Writer escapes it (raw bytes kept, \\u00XX upper case)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    return '"' + value.translate(_ESCAPE_TABLE) + '"'


_ESCAPE_TABLE = {c: f"\\u{c:04X}" for c in range(0x20)}
_ESCAPE_TABLE.update({8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"})
_ESCAPE_TABLE.update({ord('"'): '\\"', ord("\\"): "\\\\"})


def double_text(value: float) -> str | None:
    """rapidjson's Writer::Double (Grisu2 digits, Prettify); None for NaN/Inf (refused)."""
    if not math.isfinite(value):
        return None
    if value == 0:
        return "-0.0" if math.copysign(1, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    mantissa, _, exp = repr(abs(value)).partition("e")
    whole, _, frac = mantissa.partition(".")
    all_digits = (whole + frac).lstrip("0")
    digits = all_digits.rstrip("0")
    # value = digits * 10**k, as Grisu2 hands them to Prettify
    k = int(exp or 0) - len(frac) + len(all_digits) - len(digits)
    length = len(digits)
    kk = length + k
    if k >= 0 and kk <= 21:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 21:
        text = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        text = "0." + "0" * -kk + digits
    elif kk < -324:
        text = "0.0"
    elif length == 1:
        text = digits + "e" + str(kk - 1)
    else:
        text = digits[0] + "." + digits[1:] + "e" + str(kk - 1)
    return sign + text


def decimal_texts(array: np.ndarray) -> list[str]:
    """json_tensor.cc's WriteDecimal for each float: %g, else %.9g/%.17g, '.0' if whole."""
    flat = np.asarray(array).ravel()
    precise = ".9g" if flat.dtype == np.float32 else ".17g"
    texts = [f"{v:g}" for v in flat.tolist()]
    with np.errstate(all="ignore"):
        back = np.array([float(t) for t in texts], dtype=np.float64).astype(flat.dtype)
        same = (back == flat) | ~np.isfinite(flat)
    values = flat.tolist()
    for index in np.flatnonzero(~same).tolist():
        texts[index] = format(values[index], precise)
    for index, text in enumerate(texts):
        if "." in text or "e" in text:
            continue
        if text in ("nan", "-nan"):
            texts[index] = "NaN"
        elif text in ("inf", "-inf"):
            texts[index] = "Infinity" if text == "inf" else "-Infinity"
        else:
            texts[index] = text + ".0"
    return texts


class PrettyWriter:
    """rapidjson::PrettyWriter: 4-space indent; `single_line_arrays` is kFormatSingleLineArray.

    `limit` makes it JsonWriterWithLimit: once the output holds `limit` bytes, the next
    event is refused and writing stops for good.
    """

    def __init__(self, *, single_line_arrays: bool = False, limit: int | None = None) -> None:
        self.parts: list[str] = []
        self.single_line_arrays = single_line_arrays
        self._levels: list[list[Any]] = []  # [in_array, value_count]
        self._limit = limit
        self._size = 0
        self.stopped = False

    def text(self) -> str:
        return "".join(self.parts)

    def _put(self, text: str) -> None:
        self.parts.append(text)
        if self._limit is not None:
            self._size += len(text.encode("utf-8", "surrogateescape"))

    def _event(self) -> bool:
        if self._limit is not None and (self.stopped or self._size >= self._limit):
            self.stopped = True
            return False
        return True

    def _prefix(self) -> None:
        if not self._levels:
            return
        level = self._levels[-1]
        indent = "    " * len(self._levels)
        if level[0]:
            if level[1] > 0:
                self._put(", " if self.single_line_arrays else ",")
            if not self.single_line_arrays:
                self._put("\n" + indent)
        elif level[1] == 0:
            self._put("\n" + indent)
        elif level[1] % 2 == 0:
            self._put(",\n" + indent)
        else:
            self._put(": ")
        level[1] += 1

    def scalar(self, text: str | None) -> bool:
        """A number, true/false/null, or a quoted string; None fails as Double(NaN) does."""
        if not self._event():
            return False
        self._prefix()
        if text is None:
            self.stopped = True
            return False
        self._put(text)
        return True

    def key(self, name: str) -> bool:
        return self.scalar(quote(name))

    def start(self, array: bool) -> bool:
        if not self._event():
            return False
        self._prefix()
        self._put("[" if array else "{")
        self._levels.append([array, 0])
        return True

    def end(self) -> bool:
        if not self._event():
            return False
        array, count = self._levels.pop()
        if count and not (array and self.single_line_arrays):
            self._put("\n" + "    " * len(self._levels))
        self._put("]" if array else "}")
        return True

    def array_of(self, texts: list[str]) -> None:
        """An array of ready scalar texts (the common tensor case), in one go."""
        self._prefix()
        if not texts:
            self._put("[]")
        elif self.single_line_arrays:
            self._put("[" + ", ".join(texts) + "]")
        else:
            inner = "\n" + "    " * (len(self._levels) + 1)
            outer = "\n" + "    " * len(self._levels)
            self._put("[" + inner + ("," + inner).join(texts) + outer + "]")

    def value(self, value: Any) -> bool:
        """A parsed JSON value, as rapidjson's Value::Accept feeds a writer."""
        if isinstance(value, dict):
            if not self.start(array=False):
                return False
            for name, item in members(value):
                if not (self.key(name) and self.value(item)):
                    return False
            return self.end()
        if isinstance(value, list):
            if not self.start(array=True):
                return False
            for item in value:
                if not self.value(item):
                    return False
            return self.end()
        return self.scalar(scalar_text(value))


def scalar_text(value: Any) -> str | None:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return double_text(value)
    return quote(value)


MAX_DEBUG_BYTES = 256


def debug_string(value: Any) -> str:
    """json_tensor.cc's JsonValueToDebugString: one-line arrays, cut after 256 bytes."""
    writer = PrettyWriter(single_line_arrays=True, limit=MAX_DEBUG_BYTES)
    writer.value(value)
    return writer.text()


def error_body(message: str) -> bytes:
    """MakeJsonFromStatus: {"error": message} through PrettyWriter."""
    return ('{\n    "error": ' + quote(message) + "\n}").encode("utf-8", "surrogateescape")
