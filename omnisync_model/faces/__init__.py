"""Face detection, 478-point landmarks and tracking: MediaPipe's short-range face detector and attention face mesh
re-implemented in PyTorch, with weights converted from the mediapipe 0.10.21 wheel (Apache-2.0, notice in
``assets/faces/LICENSE-mediapipe.txt``). No mediapipe, TFLite, OpenCV or ONNX at run time.

Main entry points:

- :func:`face_track` (frames -> :class:`FaceTrack`: landmarks, boxes, mouth centres, confidence, valid, source per
  frame; falls back to the weight-free locator, then neighbours, then uniform guidance);
- :class:`FaceLandmarker` (single frames: ``detect``, ``landmarks``);
- :func:`write_landmarks_json`, :func:`draw_landmarks` (the ``omnisync landmarks`` command);
- :class:`SpeakerChoice` (which face speaks), :class:`TrackOptions`.
"""

from .detector import BlazeFace, BlazeFaceConfig, Detections
from .export import draw_landmarks, write_landmarks_json
from .landmarker import FaceLandmarker, FrameError
from .mesh import FaceMesh, FaceMeshConfig, refine
from .smoothing import LandmarkSmoother, OneEuro, SmoothingOptions
from .speaker import SpeakerChoice
from .tracker import SOURCES, FaceTrack, FaceTracker, TrackOptions, face_track
from .weights import load_detector, load_mesh

__all__ = ["BlazeFace", "BlazeFaceConfig", "Detections", "FaceLandmarker", "FaceMesh", "FaceMeshConfig", "FaceTrack",
           "FaceTracker", "FrameError", "LandmarkSmoother", "OneEuro", "SOURCES", "SmoothingOptions", "SpeakerChoice",
           "TrackOptions", "draw_landmarks",
           "face_track", "load_detector", "load_mesh", "refine", "write_landmarks_json"]
