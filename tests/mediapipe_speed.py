"""Reference timing for the face tracker's speed figure (a dev-only measurement, not a test): MediaPipe's own
runtime (the mediapipe 0.10.21 wheel's legacy face mesh with ``refine_landmarks``, i.e. the same attention model
the pack ships) on the same frames the pack's benchmark uses.

    python -m venv /tmp/mp && /tmp/mp/bin/pip install mediapipe==0.10.21 av
    /tmp/mp/bin/python tests/mediapipe_speed.py VIDEO [FRAMES]

Prints the median ms per frame in tracking mode (landmarks followed from the previous frame, as the pack's
tracker) and in static mode (detector + mesh on every frame). Compare with
``python -m omnisync_model.faces.bench --video VIDEO --threads 2`` on the same machine, nothing else running.
"""

import sys
import time

import av
import mediapipe as mp
import numpy as np


def main(video: str, limit: int = 120) -> None:
    frames = []
    with av.open(video) as container:
        for frame in container.decode(container.streams.video[0]):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) >= limit:
                break
    for static in (False, True):
        mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=static, refine_landmarks=True, max_num_faces=1)
        times = []
        for f in frames:
            t = time.perf_counter()
            mesh.process(f)
            times.append(time.perf_counter() - t)
        mesh.close()
        print(f"{'static' if static else 'tracking'}: {np.median(times[5:]) * 1e3:.2f} ms per frame "
              f"({len(frames)} frames {frames[0].shape[1]}x{frames[0].shape[0]})")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 120)
