"""Convert MediaPipe's face ``.tflite`` models (from the mediapipe 0.10.21 wheel) to the pack's safetensors.

    python -m omnisync_model.faces.convert_tflite WHEEL_OR_DIR OUT_DIR

``WHEEL_OR_DIR`` is the ``mediapipe-0.10.21-*.whl`` file or a folder holding the two ``.tflite`` files (searched
recursively). Writes ``face_detector.safetensors``, ``face_mesh.safetensors`` and ``LICENSE-mediapipe.txt`` (the
wheel's Apache-2.0 licence with a notice of what was converted). The output is deterministic: converting the same
wheel again reproduces the shipped files byte for byte.

How: :mod:`.tflite` reads the FlatBuffer; the graph is walked backwards from each output head, recognising each
residual block (depthwise conv -> 1x1 conv -> ADD with the input, its 2x2 max pool and/or channel PAD -> ReLU or
PReLU) and each conv + activation; layouts are converted (TFLite conv kernels OHWI -> OIHW, depthwise 1HWC ->
C1HW, PReLU alphas [1,1,C] -> [C]); constants behind DEQUANTIZE ops are taken from their float16 source unchanged
(float16 -> float32 is exact, so the float16 file loses nothing; int8 weights would be dequantised with their scale
and zero point). Every stride, padding, activation, custom-op option (crop subsets, rotation points, crop size and
scale) and channel count is checked against the PyTorch model's config; any difference stops the conversion.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import struct
import sys
import zipfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .detector import BlazeFace, BlazeFaceConfig
from .mesh import FaceMesh, FaceMeshConfig, head_names, output_key
from .tflite import Graph, TFLiteError, read_model

log = logging.getLogger(__name__)

DETECTOR_TFLITE = "mediapipe/modules/face_detection/face_detection_short_range.tflite"
MESH_TFLITE = "mediapipe/modules/face_landmark/face_landmark_with_attention.tflite"
DETECTOR_FILE = "face_detector.safetensors"
MESH_FILE = "face_mesh.safetensors"
LICENSE_FILE = "LICENSE-mediapipe.txt"
SOURCE = "mediapipe 0.10.21 wheel (PyPI)"


class ConversionError(ValueError):
    """The model file does not have the structure the PyTorch model expects."""


# --------------------------------------------------------------------------------------------- graph walking


class _Walker:
    """Backward pattern matching over one TFLite graph."""

    def __init__(self, graph: Graph):
        self.g = graph
        self.prod = graph.producer()

    def name(self, t: int) -> str:
        return self.g.tensors[t].name

    def op(self, t: int, *kinds: str):
        op = self.prod.get(t)
        if op is None or op.op not in kinds:
            found = op.op if op is not None else "no operator (a graph input or constant)"
            raise ConversionError(f"tensor {self.name(t)!r} is made by {found}, expected {' or '.join(kinds)}")
        return op

    def const(self, t: int) -> np.ndarray:
        """A constant's value; float16 sources of DEQUANTIZE are kept as float16 (exact)."""
        tensor = self.g.tensors[t]
        if tensor.data is not None:
            return tensor.data
        src = self.g.tensors[self.op(t, "DEQUANTIZE").inputs[0]]
        if src.data is None:
            raise ConversionError(f"DEQUANTIZE input {src.name!r} is not a constant")
        if src.dtype == np.float16:
            return src.data
        if src.scale is None:
            raise ConversionError(f"quantised tensor {src.name!r} has no scale")
        shape = [1] * src.data.ndim
        shape[src.axis] = -1
        scale = src.scale.reshape(shape) if src.scale.size > 1 else src.scale  # [C] -> broadcast on its axis
        zero = (src.zero_point if src.zero_point is not None else np.zeros(1)).reshape(scale.shape)  # as scale
        return ((src.data.astype(np.float32) - zero) * scale).astype(np.float32)

    def conv(self, op, depthwise: bool) -> dict[str, np.ndarray]:
        o = op.options
        if o["activation"] is not None or o["dilation"] != (1, 1) or (depthwise and o["multiplier"] != 1):
            raise ConversionError(f"conv {self.name(op.outputs[0])!r}: unexpected options {o}")
        w, b = self.const(op.inputs[1]), self.const(op.inputs[2])
        w = w.transpose(3, 0, 1, 2) if depthwise else w.transpose(0, 3, 1, 2)  # 1HWC -> C1HW, OHWI -> OIHW
        return {"weight": np.ascontiguousarray(w), "bias": np.ascontiguousarray(b)}

    def activation(self, t: int) -> tuple[Optional[np.ndarray], int]:
        """(PReLU alphas [C] or None for ReLU, the activation's input tensor)."""
        act = self.op(t, "PRELU", "RELU")
        if act.op == "RELU":
            return None, act.inputs[0]
        alpha = self.const(act.inputs[1])
        if alpha.ndim != 3 or alpha.shape[:2] != (1, 1):
            raise ConversionError(f"PReLU {self.name(t)!r}: alpha shape {alpha.shape}, expected [1,1,C]")
        return np.ascontiguousarray(alpha.reshape(-1)), act.inputs[0]  # [1,1,C] -> [C]

    def _skip(self, t: int) -> tuple[int, bool, int]:
        """Follow a skip path back: (source tensor, max-pooled, channels appended)."""
        pad = 0
        op = self.prod.get(t)
        if op is not None and op.op == "PAD":
            p = self.const(op.inputs[1])
            if p.shape != (4, 2) or p[:3].any() or p[3, 0]:
                raise ConversionError(f"PAD {self.name(t)!r}: only trailing channels may be padded, got {p.tolist()}")
            pad, t = int(p[3, 1]), op.inputs[0]
            op = self.prod.get(t)
        pooled = op is not None and op.op == "MAX_POOL_2D"
        if pooled:
            if op.options["kernel"] != (2, 2) or op.options["stride"] != (2, 2):
                raise ConversionError(f"max pool {self.name(t)!r}: expected 2x2 stride 2, got {op.options}")
            t = op.inputs[0]
        return t, pooled, pad

    def block(self, t: int) -> tuple[dict[str, np.ndarray], int, tuple[int, int, int], str]:
        """A residual block ending at ``t``: (params, input tensor, (cin, cout, stride), activation)."""
        alpha, t_add = self.activation(t)
        add = self.op(t_add, "ADD")
        if add.options.get("activation") is not None:
            raise ConversionError(f"ADD {self.name(t_add)!r} has a fused activation")
        a, b = add.inputs
        conv_in, skip_in = (a, b) if self.prod.get(a) is not None and self.prod[a].op == "CONV_2D" else (b, a)
        pw = self.op(conv_in, "CONV_2D")
        dw = self.op(pw.inputs[0], "DEPTHWISE_CONV_2D")
        x = dw.inputs[0]
        src, pooled, pad = self._skip(skip_in)
        stride = dw.options["stride"]
        same = dw.options["padding"] == "SAME"
        if src != x or pooled != (stride == (2, 2)) or stride not in ((1, 1), (2, 2)) or not same:
            raise ConversionError(f"block ending at {self.name(t)!r} does not have the BlazeBlock structure")
        params = {f"dw.conv.{k}": v for k, v in self.conv(dw, True).items()}
        params.update({f"pw.{k}": v for k, v in self.conv(pw, False).items()})
        cin, cout = params["dw.conv.weight"].shape[0], params["pw.weight"].shape[0]
        if pw.options["stride"] != (1, 1) or params["pw.weight"].shape[2:] != (1, 1) or cout != cin + pad:
            raise ConversionError(f"block ending at {self.name(t)!r}: pointwise {cin}->{cout}, {pad} channels padded")
        if alpha is not None:
            params["act.weight"] = alpha
        return params, x, (cin, cout, stride[0]), "relu" if alpha is None else "prelu"

    def conv_act(self, t: int) -> tuple[dict[str, np.ndarray], int, tuple]:
        """A conv + activation ending at ``t``: (params, input, (kernel, stride, padding))."""
        alpha, t_conv = self.activation(t)
        conv = self.op(t_conv, "CONV_2D")
        params = {f"conv.{k}": v for k, v in self.conv(conv, False).items()}
        if alpha is not None:
            params["act.weight"] = alpha
        k = params["conv.weight"].shape[2]
        return params, conv.inputs[0], (k, conv.options["stride"][0], conv.options["padding"])

    def chain(self, t: int, stops: set[int]) -> tuple[list[tuple[str, dict, tuple, int]], int]:
        """Layers from a stop tensor to ``t``, in forward order: [(kind, params, info, output tensor)], start."""
        layers = []
        while t not in stops:
            inner = self.prod.get(self.op(t, "PRELU", "RELU").inputs[0])
            if inner is not None and inner.op == "ADD":
                params, x, info, act = self.block(t)
                layers.append(("block", params, info + (act,), t))
            else:
                params, x, info = self.conv_act(t)
                layers.append(("conv", params, info, t))
            t = x
        return layers[::-1], t


def _put(out: dict[str, np.ndarray], prefix: str, params: dict[str, np.ndarray]) -> None:
    for k, v in params.items():
        out[f"{prefix}.{k}"] = v


def _expect(what: str, found, expected) -> None:
    if found != expected:
        raise ConversionError(f"{what}: the model file has {found}, the PyTorch config expects {expected}")


def _block(out: dict, prefix: str, layer: tuple, spec: tuple, activation: str) -> None:
    kind, params, info, _ = layer
    _expect(f"{prefix}: layer kind", kind, "block")
    _expect(f"{prefix} (cin, cout, stride, activation)", info, tuple(spec) + (activation,))
    _put(out, prefix, params)


def _blocks(out: dict, prefix: str, layers: list, spec: tuple, activation: str) -> None:
    _expect(f"{prefix}: number of layers", len(layers), len(spec))
    for i, (layer, want) in enumerate(zip(layers, spec)):
        _block(out, f"{prefix}.{i}", layer, want, activation)


def _head_conv(w: _Walker, name: str) -> tuple[int, dict[str, np.ndarray]]:
    """The convolution writing tensor ``name``: (its input tensor, params)."""
    try:
        op = w.op(w.g.by_name(name).index, "CONV_2D")
    except TFLiteError as exc:
        raise ConversionError(f"not the expected model: {exc}") from exc
    if op.options["padding"] != "VALID":
        raise ConversionError(f"head {name!r} should be a valid convolution")
    return op.inputs[0], w.conv(op, False)


# --------------------------------------------------------------------------------------------- detector


def convert_detector(graph: Graph, config: BlazeFaceConfig = BlazeFaceConfig()) -> dict[str, np.ndarray]:
    """State dict of :class:`.detector.BlazeFace` from ``face_detection_short_range.tflite``."""
    w = _Walker(graph)
    out: dict[str, np.ndarray] = {}
    heads = {}
    for output, kind in zip(graph.outputs, ("boxes", "scores")):
        cat = w.op(output, "CONCATENATION")
        for grid, t in zip(("fine", "coarse"), cat.inputs):
            conv = w.op(w.op(t, "RESHAPE").inputs[0], "CONV_2D")
            heads[(grid, kind)] = (conv.inputs[0], w.conv(conv, False))
    if set(heads) != {(g, k) for g in ("fine", "coarse") for k in ("boxes", "scores")}:
        raise ConversionError("detector outputs are not (regressors, classificators) from two grids")
    layers, start = w.chain(heads[("coarse", "boxes")][0], set(graph.inputs))
    stem, blocks = layers[0], layers[1:]
    _expect("stem (kernel, stride, padding)", stem[2], (config.stem_kernel, 2, "SAME"))
    _put(out, "stem", stem[1])
    _blocks(out, "blocks", blocks, config.blocks, "relu")
    _expect("fine head input", heads[("fine", "boxes")][0], blocks[config.fine_tap][3])
    for (grid, kind), (src, params) in heads.items():
        _expect(f"{grid} {kind} head input", src, heads[(grid, "boxes")][0])
        _put(out, f"{grid}_{kind}", params)
    return out


# --------------------------------------------------------------------------------------------- face mesh

# The model file's head tensors (viewer's side names) -> (our region, head); the crop op each one reads is checked.
_MESH_HEADS = {"conv_lips": ("lips", "lips"), "conv_left_eye": ("right_eye", "contour"),
               "conv_left_iris": ("right_eye", "iris"), "conv_right_eye": ("left_eye", "contour"),
               "conv_right_iris": ("left_eye", "iris")}


def _check_crop(w: _Walker, crop: int, config: FaceMeshConfig, features: int, mesh_out: int) -> str:
    """Check the TransformTensorBilinear writing ``crop`` and its matrix op; returns the region's name."""
    op = w.op(crop, "CUSTOM:TransformTensorBilinear")
    _expect("crop size", (op.options.get("output_height"), op.options.get("output_width")), (config.crop,) * 2)
    _expect("cropped feature map", op.inputs[0], features)
    matrix = w.op(op.inputs[1], "CUSTOM:Landmarks2TransformMatrix")
    o = matrix.options
    _expect("crop matrix op version", matrix.version, 2)
    spec = [r for r in config.regions if (r.left, r.right) == (o["left_rotation_idx"], o["right_rotation_idx"])]
    if len(spec) != 1:
        raise ConversionError(f"no region rotates from {o['left_rotation_idx']} to {o['right_rotation_idx']}")
    r = spec[0]
    _expect(f"{r.name} crop subset", tuple(o["subset_idxs"]), r.subset)
    _expect(f"{r.name} crop scale and size", (o["scale_x"], o["scale_y"], o["output_height"], o["output_width"],
                                             o["target_rotation_radians"]),
            (config.crop_scale, config.crop_scale, config.crop, config.crop, 0.0))
    mul = w.op(matrix.inputs[0], "MUL")
    scale = float(w.const(mul.inputs[1]).reshape(-1)[0])  # [1] constant
    _expect(f"{r.name} landmark scale", scale, config.feature_scale)
    _expect(f"{r.name} landmarks", w.op(mul.inputs[0], "RESHAPE").inputs[0], mesh_out)
    return r.name


def convert_mesh(graph: Graph, config: FaceMeshConfig = FaceMeshConfig()) -> dict[str, np.ndarray]:
    """State dict of :class:`.mesh.FaceMesh` from ``face_landmark_with_attention.tflite``."""
    w = _Walker(graph)
    out: dict[str, np.ndarray] = {}
    neck_in, mesh = _head_conv(w, "output_mesh")
    flag_in, flag = _head_conv(w, "conv_faceflag")
    _expect("presence head input", flag_in, neck_in)
    layers, _ = w.chain(neck_in, set(graph.inputs))
    stem, backbone, (reduce, neck) = layers[0], layers[1:-2], layers[-2:]
    _expect("stem (kernel, stride, padding)", stem[2], (3, 2, "SAME"))
    _put(out, "stem", stem[1])
    _blocks(out, "backbone", backbone, config.backbone, "prelu")
    _expect("neck reduction (kernel, stride, padding)", (reduce[0],) + reduce[2], ("conv", 1, 1, "VALID"))
    _put(out, "neck.reduce", reduce[1])
    _block(out, "neck.block", neck, (config.neck_channels, config.neck_channels, 1), "prelu")
    _put(out, "mesh_head", mesh)
    _put(out, "presence_head", flag)
    features = backbone[config.feature_tap][3]
    mesh_out = w.g.by_name("output_mesh").index  # found by _head_conv above
    customs = {t for op in graph.operators if op.op.startswith("CUSTOM:") for t in op.outputs}
    trunks: dict[str, list] = {}
    heads: dict[tuple[str, str], tuple[list, tuple, tuple, dict]] = {}
    for tensor, (region, head) in _MESH_HEADS.items():
        head_in, params = _head_conv(w, tensor)
        layers, crop = w.chain(head_in, customs)
        _expect(f"{tensor} region", _check_crop(w, crop, config, features, mesh_out), region)
        n, k = len(config.trunk), len(config.head)
        _expect(f"{tensor} layers", len(layers), n + k + 2)
        trunk, rest = layers[:n], layers[n:]
        if region in trunks:
            _expect(f"{region} trunk shared by its heads", [l[3] for l in trunk], [l[3] for l in trunks[region]])
        trunks[region] = trunk
        heads[(region, head)] = (rest[:k], rest[k], rest[k + 1], params)
    _stacked(out, "regions.trunk", [trunks[r.name] for r in config.regions], config.trunk)
    order = head_names(config)
    _expect("region heads", sorted(heads), sorted((r, h) for r, h, _ in order))
    _stacked(out, "regions.head_blocks", [heads[(r, h)][0] for r, h, _ in order], config.head)
    reduce = [heads[(r, h)][1] for r, h, _ in order]
    for layer in reduce:
        _expect("region head reduction", (layer[0],) + layer[2], ("conv", 1, 1, "VALID"))
    _concat(out, "regions.head_neck.reduce", [layer[1] for layer in reduce])
    _stacked(out, "regions.head_neck.block", [[heads[(r, h)][2]] for r, h, _ in order],
             ((config.neck_channels, config.neck_channels, 1),), single=True)
    for r, h, _ in order:
        _put(out, f"regions.out.{output_key(r, h)}", heads[(r, h)][3])
    return out


def _concat(out: dict, prefix: str, params: list[dict[str, np.ndarray]]) -> None:
    """Parameters of parallel branches concatenated along the output channels (grouped layers)."""
    for name in params[0]:
        out[f"{prefix}.{name}"] = np.ascontiguousarray(np.concatenate([p[name] for p in params], 0))


def _stacked(out: dict, prefix: str, branches: list[list], spec: tuple, single: bool = False) -> None:
    """Blocks of parallel branches (each a list of layers following ``spec``) as grouped blocks."""
    for branch in branches:
        check: dict = {}
        _blocks(check, prefix, branch, spec, "prelu")
    for i in range(len(spec)):
        _concat(out, prefix if single else f"{prefix}.{i}", [branch[i][1] for branch in branches])


# --------------------------------------------------------------------------------------------- files


_ST_DTYPES = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}


def save_deterministic(tensors: dict[str, np.ndarray], path: Path, meta: dict[str, str]) -> None:
    """Write a safetensors file whose bytes depend only on the inputs (the safetensors library writes metadata in
    hash-map order, which changes from run to run): tensors and metadata keys sorted, header padded to 8 bytes;
    atomic (temporary file, then rename)."""
    header: dict = {"__metadata__": dict(sorted(meta.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        if a.dtype not in _ST_DTYPES:
            raise ConversionError(f"{name}: cannot store dtype {a.dtype}")
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _ST_DTYPES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_against_model(state: dict[str, np.ndarray], model: torch.nn.Module, what: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        shapes = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        raise ConversionError(f"{what}: converted tensors do not match the model: missing {missing[:8]}, "
                              f"unexpected {extra[:8]}, wrong shapes {shapes[:8]}")


def _read_sources(source: Path) -> tuple[dict[str, bytes], Optional[str]]:
    """{member path: bytes} of the two models, and the wheel's licence text when there is one."""
    names = (DETECTOR_TFLITE, MESH_TFLITE)
    if source.is_file():
        with zipfile.ZipFile(source) as wheel:
            members = wheel.namelist()
            files = {n: wheel.read(n) for n in names if n in members}
            lic = [m for m in members if m.endswith(".dist-info/LICENSE")]
            text = wheel.read(lic[0]).decode("utf-8") if lic else None
    elif source.is_dir():
        files = {}
        for n in names:
            hits = sorted(source.rglob(Path(n).name))
            if hits:
                files[n] = hits[0].read_bytes()
        lic = sorted(source.rglob("mediapipe-*.dist-info/LICENSE"))
        text = lic[0].read_text("utf-8") if lic else None
    else:
        raise FileNotFoundError(f"{source}: no such wheel or folder")
    missing = [n for n in names if n not in files]
    if missing:
        raise FileNotFoundError(f"{source}: missing {', '.join(missing)}")
    return files, text


def _notice(files: dict[str, bytes], licence: str) -> str:
    lines = ["The face detector and face mesh weights in this folder (face_detector.safetensors,",
             "face_mesh.safetensors) are converted from MediaPipe's models, Copyright The MediaPipe Authors,",
             "licensed under the Apache License 2.0 (below). Source: the mediapipe 0.10.21 wheel from PyPI:"]
    lines += [f"  {n}  sha256 {hashlib.sha256(b).hexdigest()}" for n, b in files.items()]
    lines += ["Modification: the weights were re-encoded from TFLite FlatBuffers to safetensors (float16 values",
              "unchanged, tensor layouts transposed to PyTorch's) by omnisync_model/faces/convert_tflite.py.", "", ""]
    return "\n".join(lines) + licence


def convert(source: Union[str, Path], out_dir: Union[str, Path]) -> list[Path]:
    """Convert both models from a wheel or folder into ``out_dir``; returns the files written."""
    files, licence = _read_sources(Path(source))
    out_dir = Path(out_dir)
    written = []
    jobs = ((DETECTOR_TFLITE, DETECTOR_FILE, convert_detector, BlazeFace(device="meta"), "blazeface_short_range"),
            (MESH_TFLITE, MESH_FILE, convert_mesh, FaceMesh(device="meta"), "face_mesh_attention_478"))
    for member, name, fn, model, kind in jobs:
        try:
            state = fn(read_model(files[member]))
        except TFLiteError as exc:
            raise ConversionError(f"{member}: {exc}") from exc
        _check_against_model(state, model, member)
        meta = {"format": "omnisync-faces", "model": kind, "source": f"{SOURCE}: {member}",
                "source_sha256": hashlib.sha256(files[member]).hexdigest(), "license": "Apache-2.0 (MediaPipe)"}
        save_deterministic(state, out_dir / name, meta)
        written.append(out_dir / name)
    if licence is not None:
        (out_dir / LICENSE_FILE).write_text(_notice(files, licence), encoding="utf-8")
        written.append(out_dir / LICENSE_FILE)
    else:
        log.warning("no licence file found next to the models: %s not written", LICENSE_FILE)
    return written


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="mediapipe 0.10.21 wheel, or a folder with the .tflite files")
    parser.add_argument("out_dir", help="where to write the safetensors files")
    args = parser.parse_args(argv)
    from ..cli.main import emit  # the command line's one place that prints

    for path in convert(args.source, args.out_dir):
        emit(f"wrote {path} (sha256 {hashlib.sha256(path.read_bytes()).hexdigest()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
