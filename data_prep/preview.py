"""preview.png: a sheet people can judge at a glance — faces (averages or photos) and morphs with their landmarks and textures."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems

from normalized_faces import visualize
from normalized_faces.data import decode_record


def _records(path):
    if not FileSystems.exists(path):
        return []
    return [decode_record(r.numpy()) for r in tf.data.TFRecordDataset(path)]


COLORS = {"average": (255, 40, 40), "photo": (255, 40, 40), "morph": (40, 120, 255)}


def _caption(record) -> str:
    if record.kind == "average":
        name = record.identity
    elif record.kind == "photo":
        name = record.parents[0].rsplit("/", 1)[-1]
    else:
        name = "+".join(record.parents)
    return f"{record.kind}: {name}"[:40]


def preview_sheet(records) -> np.ndarray:
    """A cell per record (image + landmarks, texture), 4 per row, in the order given."""
    cells = [
        (visualize.draw_landmarks(r.image, r.landmarks, color=COLORS[r.kind]), r.texture, _caption(r)) for r in records
    ]
    if not cells:
        return visualize.image_grid(
            [[np.full([64, 64, 3], 255, np.uint8)]], labels=["no faces were produced: see rejected.jsonl"]
        )
    rows, row_labels, per_row = [], [], 4
    for start in range(0, len(cells), per_row):
        chunk = cells[start : start + per_row]
        rows.append([image for cell in chunk for image in cell[:2]])
        row_labels.append(" | ".join(cell[2] for cell in chunk))
    sheet = visualize.image_grid(rows, column_titles=["face + landmarks", "texture"] * per_row)
    return _caption_rows(sheet, row_labels, len(rows))


def _caption_rows(sheet, labels, count):
    import cv2

    height = (sheet.shape[0] - 18) // count
    caption_height = 16
    out = []
    for index in range(count):
        band = np.full([caption_height, sheet.shape[1], 3], 255, np.uint8)
        cv2.putText(
            band,
            labels[index][: sheet.shape[1] // 7],
            (6, 12),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        out.append(band)
        out.append(sheet[18 + index * height : 18 + (index + 1) * height])
    return np.concatenate([sheet[:18]] + out)


def write_preview(output_dir, *record_paths) -> str:
    """preview.png from the sampled records in `record_paths` (missing files are skipped)."""
    sheet = preview_sheet([record for path in record_paths for record in _records(path)])
    path = FileSystems.join(output_dir, "preview.png")
    import cv2

    ok, encoded = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    with FileSystems.create(path) as file:
        file.write(encoded.tobytes())
    return path
