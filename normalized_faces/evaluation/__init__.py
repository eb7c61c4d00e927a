"""Measures of normalized faces beyond identity: image measures (measures.py) and the evaluation
against ground-truth photos of the same people (ground_truth.py). normalized_faces.evaluate is the
paper's identity evaluation."""
