"""The shipped face weights: provenance, licence, and reproducibility of the TFLite conversion.

Set OMNISYNC_MEDIAPIPE_WHEEL to the mediapipe 0.10.21 wheel (``pip download mediapipe==0.10.21 --no-deps``) to
reconvert it and compare the result with the committed files byte for byte.
"""

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest

from omnisync_model.core.checkpoint import read_metadata
from omnisync_model.faces.convert_tflite import (DETECTOR_TFLITE, MESH_TFLITE, ConversionError, convert,
                                                 convert_detector, convert_mesh)
from omnisync_model.faces.detector import BlazeFaceConfig
from omnisync_model.faces.mesh import FaceMeshConfig
from omnisync_model.faces.tflite import TFLiteError, read_flexbuffer, read_model
from omnisync_model.faces.weights import ASSETS, DETECTOR_PATH, MESH_PATH

WHEEL = os.environ.get("OMNISYNC_MEDIAPIPE_WHEEL", "")
needs_wheel = pytest.mark.skipif(not Path(WHEEL).is_file(), reason="set OMNISYNC_MEDIAPIPE_WHEEL to the "
                                 "mediapipe-0.10.21 wheel to check the conversion")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_assets_record_their_source_and_licence():
    for path, member in ((DETECTOR_PATH, DETECTOR_TFLITE), (MESH_PATH, MESH_TFLITE)):
        meta = read_metadata(path)
        assert meta["format"] == "omnisync-faces" and member in meta["source"] and len(meta["source_sha256"]) == 64
    notice = (ASSETS / "LICENSE-mediapipe.txt").read_text()
    assert "Apache License" in notice and "Version 2.0" in notice
    assert read_metadata(MESH_PATH)["source_sha256"] in notice  # the notice names the converted files
    assert DETECTOR_PATH.stat().st_size + MESH_PATH.stat().st_size < 4_000_000


def test_reader_rejects_other_files():
    with pytest.raises(TFLiteError, match="TFL3"):
        read_model(b"\x00" * 64)
    with pytest.raises(TFLiteError):
        read_flexbuffer(b"\x01")


def test_flexbuffer_map():
    # {"a": 7} with 1-byte widths: key "a\0" | keys vector (size 1, offset back to the key) | map prefix (offset
    # back to the keys, key width 1, size 1) | value 7 | its type (INT) | root offset | root type MAP | width 1
    buf = bytes([ord("a"), 0, 1, 3, 1, 1, 1, 7, 1 << 2, 2, 9 << 2, 1])
    assert read_flexbuffer(buf) == {"a": 7}


@needs_wheel
def test_conversion_reproduces_the_shipped_files(tmp_path):
    written = convert(WHEEL, tmp_path)
    assert [p.name for p in written] == ["face_detector.safetensors", "face_mesh.safetensors", "LICENSE-mediapipe.txt"]
    for p in written:
        assert _sha(p) == _sha(ASSETS / p.name), p.name


@needs_wheel
def test_conversion_checks_the_structure():
    import zipfile

    with zipfile.ZipFile(WHEEL) as wheel:
        det, mesh = read_model(wheel.read(DETECTOR_TFLITE)), read_model(wheel.read(MESH_TFLITE))
    cfg = BlazeFaceConfig()
    blocks = list(cfg.blocks)
    blocks[2] = (28, 32, 1)  # a stride the model file does not have
    with pytest.raises(ConversionError, match="stride"):
        convert_detector(det, dataclasses.replace(cfg, blocks=tuple(blocks)))
    with pytest.raises(ConversionError, match="crop subset"):
        regions = list(FaceMeshConfig().regions)
        regions[0] = dataclasses.replace(regions[0], subset=regions[0].subset[::-1])
        convert_mesh(mesh, dataclasses.replace(FaceMeshConfig(), regions=tuple(regions)))
    with pytest.raises(ConversionError):
        convert_mesh(det)
