"""Head pose (yaw, pitch, roll in degrees) from a face's landmarks: the mesh when there is one
(3-D points), otherwise the 5 points (a geometric estimate, good to about 10-15 degrees).

Signs: yaw > 0 when the nose points toward image right; pitch > 0 when the face looks up;
roll > 0 when the eye line turns clockwise on screen (right eye lower).
"""
from __future__ import annotations

import math

import numpy as np

from .base import Face


def _deg(x: float) -> float:
    return float(math.degrees(x))


def head_pose(face: Face) -> tuple[float, float, float]:
    if face.mesh is not None and len(face.mesh) >= 455:
        m = np.asarray(face.mesh, dtype=np.float64)
        right_side, left_side = m[234], m[454]          # image left / image right for a frontal face
        top, chin = m[10], m[152]
        across = left_side - right_side
        down = chin - top
        roll = math.atan2(across[1], across[0])
        yaw = math.atan2(across[2], math.hypot(across[0], across[1]))           # z grows away from camera
        pitch = math.atan2(-down[2], math.hypot(down[0], down[1]))
        return _deg(yaw), _deg(pitch), _deg(roll)
    if face.landmarks5 is None:
        return 0.0, 0.0, 0.0
    p = np.asarray(face.landmarks5, dtype=np.float64)
    le, re, nose, ml, mr = p
    d = re - le
    roll = math.atan2(d[1], d[0])
    c, s = math.cos(-roll), math.sin(-roll)
    rot = np.array([[c, -s], [s, c]])
    q = (p - le) @ rot.T                                  # eye line horizontal, left eye at 0
    iod = max(1e-6, q[1, 0])
    eye_mid = (q[0] + q[1]) / 2
    mouth_mid = (q[3] + q[4]) / 2
    axis_x = (eye_mid[0] + mouth_mid[0]) / 2
    yaw = math.asin(float(np.clip((q[2, 0] - axis_x) / (0.55 * iod), -1, 1)))
    span = max(1e-6, mouth_mid[1] - eye_mid[1])
    ratio = (q[2, 1] - eye_mid[1]) / span                   # about 0.6 for a level face
    pitch = math.asin(float(np.clip((0.6 - ratio) * 2.5, -1, 1)))
    return _deg(yaw), _deg(pitch), _deg(roll)
