"""Expression measures from the 68 landmarks, and the labels they give.

Data prep's filters threshold the measures (a neutral face for the paper's model); the flow VAE
labels its photos with them (Yeh et al.'s MULTI-PIE labels cannot be had here).

  mouth_open   inner-lip gap / mouth width: closed < 0.1; talking and toothy smiles 0.2-0.6
  smile        how far the mouth corners sit above the lips' centre line, / mouth width:
               neutral -0.05..0.1; smiles from 0.15

Labels, thresholds from data prep's filter calibration (README "Data prep filters"):
  smile       smile > 0.15 (data prep's max_smile: the dropped side), whatever the mouth
  open_mouth  mouth_open > 0.2 (data prep's max_mouth_open) without a smile
  neutral     smile < 0.1 and mouth_open < 0.1 (inside both filters' neutral ranges)
  other       in between: used in pairs, never as an editing target
"""

from __future__ import annotations

import numpy as np

SMILE = 0.15
OPEN_MOUTH = 0.2
NEUTRAL_SMILE = 0.1
NEUTRAL_MOUTH_OPEN = 0.1
LABELS = ("neutral", "smile", "open_mouth", "other")


def _mouth_width(points):
    return max(np.linalg.norm(points[54] - points[48]), 1e-6)


def mouth_open(points: np.ndarray) -> float:
    gap = np.mean([np.linalg.norm(points[a] - points[b]) for a, b in ((61, 67), (62, 66), (63, 65))])
    return float(gap / _mouth_width(points))


def smile(points: np.ndarray) -> float:
    centre_y = (points[51, 1] + points[57, 1]) / 2.0  # between the lips' middle points
    corners_y = (points[48, 1] + points[54, 1]) / 2.0
    return float((centre_y - corners_y) / _mouth_width(points))


def label(points: np.ndarray) -> str:
    """One of LABELS for a face's [68, 2] landmarks."""
    smiling, open_mouth = smile(points), mouth_open(points)
    if smiling > SMILE:
        return "smile"
    if open_mouth > OPEN_MOUTH:
        return "open_mouth"
    if smiling < NEUTRAL_SMILE and open_mouth < NEUTRAL_MOUTH_OPEN:
        return "neutral"
    return "other"
