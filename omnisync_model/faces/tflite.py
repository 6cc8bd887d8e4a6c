"""A small reader for TensorFlow Lite model files (a FlatBuffer) and their FlexBuffer custom options.

Development tool for :mod:`.convert_tflite`: nothing at run time reads ``.tflite`` files. Written from the
published formats (the TFLite ``schema.fbs`` field order, the FlatBuffers and FlexBuffers binary encodings), with
no dependency beyond numpy. Only what the MediaPipe face models use is decoded: the first subgraph's tensors,
buffers, quantisation parameters, operators, the builtin options of convolutions, pooling and element-wise ops,
and custom options maps.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

# BuiltinOperator codes (schema.fbs) of the ops these models contain.
OPS = {0: "ADD", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 6: "DEQUANTIZE", 17: "MAX_POOL_2D",
       18: "MUL", 19: "RELU", 22: "RESHAPE", 32: "CUSTOM", 34: "PAD", 45: "STRIDED_SLICE", 54: "PRELU"}
# TensorType codes -> numpy dtypes.
DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}
PADDING = {0: "SAME", 1: "VALID"}
ACTIVATION = {0: None, 1: "RELU", 3: "RELU6"}


class TFLiteError(ValueError):
    """The file is not a TFLite model this reader understands."""


# --------------------------------------------------------------------------------------------- FlatBuffers


class _Table:
    """One FlatBuffers table: a position in the buffer and its vtable (field slot -> offset)."""

    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vtable_len = struct.unpack_from("<H", buf, self.vtable)[0]

    def _offset(self, slot: int) -> int:
        o = 4 + 2 * slot
        return struct.unpack_from("<H", self.buf, self.vtable + o)[0] if o < self.vtable_len else 0

    def scalar(self, slot: int, fmt: str, default=0):
        off = self._offset(slot)
        return struct.unpack_from("<" + fmt, self.buf, self.pos + off)[0] if off else default

    def _indirect(self, slot: int) -> Optional[int]:
        off = self._offset(slot)
        if not off:
            return None
        p = self.pos + off
        return p + struct.unpack_from("<I", self.buf, p)[0]

    def table(self, slot: int) -> Optional["_Table"]:
        p = self._indirect(slot)
        return None if p is None else _Table(self.buf, p)

    def _vector(self, slot: int) -> tuple[int, int]:
        p = self._indirect(slot)
        if p is None:
            return 0, 0
        return p + 4, struct.unpack_from("<I", self.buf, p)[0]

    def tables(self, slot: int) -> list["_Table"]:
        start, n = self._vector(slot)
        return [_Table(self.buf, start + 4 * i + struct.unpack_from("<I", self.buf, start + 4 * i)[0])
                for i in range(n)]

    def array(self, slot: int, dtype) -> np.ndarray:
        start, n = self._vector(slot)
        return np.frombuffer(self.buf, dtype=np.dtype(dtype).newbyteorder("<"), count=n, offset=start).copy()

    def string(self, slot: int) -> str:
        start, n = self._vector(slot)
        return self.buf[start:start + n].decode("utf-8")


# --------------------------------------------------------------------------------------------- FlexBuffers


_FLEX_INT, _FLEX_UINT, _FLEX_FLOAT, _FLEX_KEY, _FLEX_STRING = 1, 2, 3, 4, 5
_FLEX_MAP, _FLEX_VECTOR, _FLEX_BOOL = 9, 10, 26
_FLEX_TYPED = {11: "i", 12: "u", 13: "f", 14: "k", 36: "b"}  # typed vectors of ints, uints, floats, keys, bools
_FLEX_INDIRECT = {6: "i", 7: "u", 8: "f"}


def _flex_int(buf: bytes, pos: int, width: int, signed: bool) -> int:
    return int.from_bytes(buf[pos:pos + width], "little", signed=signed)


def _flex_float(buf: bytes, pos: int, width: int) -> float:
    return struct.unpack_from({4: "<f", 8: "<d"}[width], buf, pos)[0]


def _flex_scalar(buf: bytes, pos: int, width: int, kind: str):
    if kind == "f":
        return _flex_float(buf, pos, width)
    if kind == "k":
        target = pos - _flex_int(buf, pos, width, False)
        return buf[target:buf.index(b"\0", target)].decode("utf-8")
    value = _flex_int(buf, pos, width, kind == "i")
    return bool(value) if kind == "b" else value


def _flex_value(buf: bytes, pos: int, parent_width: int, packed: int):
    """The value stored at ``pos`` in a slot of ``parent_width`` bytes, with packed type ``packed``."""
    kind, width = packed >> 2, 1 << (packed & 3)
    if kind in (_FLEX_INT, _FLEX_UINT, _FLEX_FLOAT, _FLEX_BOOL):
        return _flex_scalar(buf, pos, parent_width, {1: "i", 2: "u", 3: "f", 26: "b"}[kind])
    target = pos - _flex_int(buf, pos, parent_width, False)
    if kind == _FLEX_KEY:
        return buf[target:buf.index(b"\0", target)].decode("utf-8")
    if kind in _FLEX_INDIRECT:
        return _flex_scalar(buf, target, width, _FLEX_INDIRECT[kind])
    size = _flex_int(buf, target - width, width, False)
    if kind == _FLEX_STRING:
        return buf[target:target + size].decode("utf-8")
    if kind in _FLEX_TYPED:
        return [_flex_scalar(buf, target + i * width, width, _FLEX_TYPED[kind]) for i in range(size)]
    if kind in (_FLEX_VECTOR, _FLEX_MAP):
        types = target + size * width  # one packed type byte per element after the elements
        values = [_flex_value(buf, target + i * width, width, buf[types + i]) for i in range(size)]
        if kind == _FLEX_VECTOR:
            return values
        keys_at = target - 3 * width
        keys = keys_at - _flex_int(buf, keys_at, width, False)
        key_width = _flex_int(buf, target - 2 * width, width, False)
        names = [_flex_scalar(buf, keys + i * key_width, key_width, "k") for i in range(size)]
        return dict(zip(names, values))
    raise TFLiteError(f"unsupported FlexBuffer type {kind}")


def read_flexbuffer(data: bytes) -> Any:
    """Decode a FlexBuffer (the root is at the end: value, packed type, root byte width)."""
    if len(data) < 3:
        raise TFLiteError("FlexBuffer too short")
    width = data[-1]
    return _flex_value(data, len(data) - 2 - width, width, data[-2])


# --------------------------------------------------------------------------------------------- model


@dataclass
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: Any
    data: Optional[np.ndarray]  # constant contents (shape applied), None for activations
    scale: Optional[np.ndarray] = None  # quantisation scale / zero point / axis, when quantised
    zero_point: Optional[np.ndarray] = None
    axis: int = 0


@dataclass
class Operator:
    index: int
    op: str  # "CONV_2D", ..., or "CUSTOM:<name>"
    version: int
    inputs: tuple[int, ...]  # tensor indices, -1 = optional input left out
    outputs: tuple[int, ...]
    options: dict = field(default_factory=dict)


@dataclass
class Graph:
    tensors: list[Tensor]
    operators: list[Operator]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def producer(self) -> dict[int, Operator]:
        """Tensor index -> the operator that writes it."""
        return {t: op for op in self.operators for t in op.outputs}

    def consumers(self) -> dict[int, list[Operator]]:
        out: dict[int, list[Operator]] = {}
        for op in self.operators:
            for t in op.inputs:
                out.setdefault(t, []).append(op)
        return out

    def by_name(self, name: str) -> Tensor:
        hits = [t for t in self.tensors if t.name == name]
        if len(hits) != 1:
            raise TFLiteError(f"expected one tensor named {name!r}, found {len(hits)}")
        return hits[0]


def _options(op: str, table: Optional[_Table]) -> dict:
    """Builtin options of the ops we use (slots in schema.fbs order; absent fields take schema defaults)."""
    if table is None:
        return {}
    s = table.scalar
    if op == "CONV_2D":
        return {"padding": PADDING[s(0, "b")], "stride": (s(2, "i"), s(1, "i")), "activation": ACTIVATION[s(3, "b")],
                "dilation": (s(5, "i", 1), s(4, "i", 1))}
    if op == "DEPTHWISE_CONV_2D":
        return {"padding": PADDING[s(0, "b")], "stride": (s(2, "i"), s(1, "i")), "multiplier": s(3, "i"),
                "activation": ACTIVATION[s(4, "b")], "dilation": (s(6, "i", 1), s(5, "i", 1))}
    if op == "MAX_POOL_2D":
        return {"padding": PADDING[s(0, "b")], "stride": (s(2, "i"), s(1, "i")), "kernel": (s(4, "i"), s(3, "i")),
                "activation": ACTIVATION[s(5, "b")]}
    if op in ("ADD", "MUL"):
        return {"activation": ACTIVATION[s(0, "b")]}
    if op == "CONCATENATION":
        return {"axis": s(0, "i"), "activation": ACTIVATION[s(1, "b")]}
    return {}


def _buffer_bytes(buf: bytes, buffer: _Table) -> bytes:
    data_start, n = buffer._vector(0)
    if n:
        return buf[data_start:data_start + n]
    offset, size = buffer.scalar(1, "Q"), buffer.scalar(2, "Q")  # large models keep data after the FlatBuffer
    return buf[offset:offset + size] if offset > 1 and size else b""


def _tensor(buf: bytes, index: int, t: _Table, buffers: list[_Table]) -> Tensor:
    type_code = t.scalar(1, "b")
    if type_code not in DTYPES:
        raise TFLiteError(f"tensor {index}: unsupported type code {type_code}")
    dtype = DTYPES[type_code]
    shape = tuple(int(v) for v in t.array(0, np.int32))
    raw = _buffer_bytes(buf, buffers[t.scalar(2, "I")]) if t.scalar(2, "I") < len(buffers) else b""
    data = None
    if raw:
        data = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).copy()  # flat -> shape
    q = t.table(4)
    scale = zero = None
    axis = 0
    if q is not None:
        scale, zero = q.array(2, np.float32), q.array(3, np.int64)
        axis = q.scalar(6, "i")
    return Tensor(index, t.string(3), shape, dtype, data, scale if scale is not None and scale.size else None,
                  zero if zero is not None and zero.size else None, axis)


def read_model(source: Union[str, Path, bytes]) -> Graph:
    """Parse a ``.tflite`` file (path or bytes) into its first subgraph."""
    buf = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise TFLiteError("not a TFLite model (no TFL3 identifier)")
    model = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
    codes = []
    for c in model.tables(1):  # OperatorCode: deprecated_builtin_code, custom_code, version, builtin_code
        code = max(c.scalar(0, "b"), c.scalar(3, "i"))
        name = OPS.get(code, f"BUILTIN_{code}")
        codes.append((f"CUSTOM:{c.string(1)}" if name == "CUSTOM" else name, c.scalar(2, "i", 1)))
    subgraphs, buffers = model.tables(2), model.tables(4)
    if not subgraphs:
        raise TFLiteError("model has no subgraph")
    g = subgraphs[0]
    tensors = [_tensor(buf, i, t, buffers) for i, t in enumerate(g.tables(0))]
    operators = []
    for i, o in enumerate(g.tables(3)):
        name, version = codes[o.scalar(0, "I")]
        if name.startswith("CUSTOM:"):
            start, n = o._vector(5)
            opts = read_flexbuffer(buf[start:start + n]) if n else {}
        else:
            opts = _options(name, o.table(4))
        operators.append(Operator(i, name, version, tuple(int(v) for v in o.array(1, np.int32)),
                                  tuple(int(v) for v in o.array(2, np.int32)), opts))
    return Graph(tensors, operators, tuple(int(v) for v in g.array(1, np.int32)),
                 tuple(int(v) for v in g.array(2, np.int32)))
