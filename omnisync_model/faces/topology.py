"""Landmark index tables of MediaPipe's 478-point face mesh.

The region lists are MediaPipe's refinement mappings (``tensors_to_face_landmarks_with_attention.pbtxt``; the same
indices are the crop subsets stored in the model's ``Landmarks2TransformMatrix`` options, which the converter
checks). "Left" / "right" are the person's, as in MediaPipe's ``face_mesh_connections.py``: the right eye is the
point-33 side (image left when the person faces the camera). The model file's own tensors are named from the
viewer's side (``conv_left_eye`` refines the point-33 eye).
"""

from __future__ import annotations

# Lips: 80 points, outer lower (11), outer upper (9), inner lower (11), inner upper (9), then two more rings.
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
        78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415,
        76, 77, 90, 180, 85, 16, 315, 404, 320, 307, 306, 184, 74, 73, 72, 11, 302, 303, 304, 408,
        62, 96, 89, 179, 86, 15, 316, 403, 319, 325, 292, 183, 42, 41, 38, 12, 268, 271, 272, 407)
# Eye contours and brows: 71 points each; the first 16 are the eyelid contour (used for the iris depth).
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173,
             130, 25, 110, 24, 23, 22, 26, 112, 243, 247, 30, 29, 27, 28, 56, 190,
             226, 31, 228, 229, 230, 231, 232, 233, 244, 113, 225, 224, 223, 222, 221, 189,
             35, 124, 46, 53, 52, 65, 143, 111, 117, 118, 119, 120, 121, 128, 245,
             156, 70, 63, 105, 66, 107, 55, 193)
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398,
            359, 255, 339, 254, 253, 252, 256, 341, 463, 467, 260, 259, 257, 258, 286, 414,
            446, 261, 448, 449, 450, 451, 452, 453, 464, 342, 445, 444, 443, 442, 441, 413,
            265, 353, 276, 283, 282, 295, 372, 340, 346, 347, 348, 349, 350, 357, 465,
            383, 300, 293, 334, 296, 336, 285, 417)
EYE_AVERAGE = 16  # iris depth = mean depth of the first 16 contour points of its eye
RIGHT_IRIS = (468, 469, 470, 471, 472)  # centre first
LEFT_IRIS = (473, 474, 475, 476, 477)
NUM_LANDMARKS = 478

# Closed face outline (36 points, clockwise from the forehead top), from FACEMESH_FACE_OVAL.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
             176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
# Closed outer lip contour (20 points): the lower outer run then the upper outer run reversed.
LIPS_OUTER = LIPS[:11] + tuple(reversed(LIPS[11:20]))
MOUTH = LIPS  # every lip point: the mouth centre is their mean
EYE_CORNERS = (33, 133, 362, 263)  # right outer, right inner, left inner, left outer
ROTATION_POINTS = (33, 263)  # ROI rotation from landmarks (MediaPipe: left side of the left eye -> right side)
# Points that move with the skull, not with expressions (forehead, nose bridge and tip, temples, cheekbones):
# used to remove head motion when measuring jitter.
RIGID = (10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 127, 356, 234, 454, 116, 345, 117, 346)
# Lower face for the paste-back mask: the jaw line from the right cheek (323) round the chin to the left cheek (93)
# (FACE_OVAL's lower arc), closed across the face at the bottom of the nose (cheek 205, below the nose tip 2,
# cheek 425): the lips, the chin and the jaw, which move with speech, and nothing above the nose tip.
JAW_OUTLINE = FACE_OVAL[9:28] + (205, 2, 425)
