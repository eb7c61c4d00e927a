"""normalize-face: turn photos into frontal, neutral, evenly lit faces of the same people.

    normalize-face --model=DIR --output_dir=OUT PHOTO [PHOTO ...]
    normalize-face --model=DIR --output_dir=OUT --manifest=photos.jsonl   # photos with 68 landmarks

--model is an exported SavedModel (a version folder, or the base folder: the highest version) or a
training run's model_dir. Photos of any size: faces are found with dlib (or taken from the
manifest's landmarks), aligned exactly as in data prep, and normalized. Writes one PNG per face
(<photo>.png, or <photo>_face<i>.png for photos with several) and grid.png (a row per face: aligned
input | normalized face). Names come from each photo's path relative to the common folder of all
the photos (a/01.jpg -> a_01.png); photos that would share a name keep their extension
(face_webp.png) or get _2, _3: no file is written twice in a run, none over grid.png, every file
through a temporary name and a rename.
--adjust_colors also writes <photo>_adjusted.png, the paper's automatic photo adjustment.
--mesh also writes a 3-D face per face (the paper's Sec. 7.3): the Surrey Face Model fitted to the
normalized face's landmarks and coloured from it, as <photo>.obj (+ .mtl, <photo>_texture.png),
<photo>.ply (vertex colours) and <photo>_turntable.png (photo | normalized face | views at yaw -45..45),
and turntables.png with every face's row;
--neutral_mesh zeroes the fitted expression in the mesh.
Unreadable photos (missing, a folder, a FIFO, a link loop, not an image, damaged) and photos
without a face get a line each and the rest go on. --output_dir is checked (created, a folder,
writable) before the model loads. A SavedModel or run folder given to --model is code: load only
models you trust.
Exit codes: 0 every photo gave a face; 1 some photos failed (the others were written);
2 nothing was done (bad flags, output folder or model).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from normalized_faces.batch import collect_faces  # noqa: E402, F401 - the command's callers import it from here

FLAGS = flags.FLAGS


def define_flags():
    """The command's flags (defined on use, so importing this module defines none)."""
    flags.DEFINE_string(
        "model",
        None,
        "Exported SavedModel (version or base folder) or a training model_dir; default: the model shipped with the package.",
    )
    flags.DEFINE_string("output_dir", None, "Where normalized faces and grid.png go.")
    flags.DEFINE_string(
        "manifest",
        None,
        "Optional .jsonl/.csv with path[, identity], landmarks: skips detection (e.g. synthetic faces).",
    )
    flags.DEFINE_bool(
        "adjust_colors",
        False,
        "Also write each photo colour-corrected from its normalized face (paper, sec. on photo adjustment).",
    )
    flags.DEFINE_bool(
        "mesh",
        False,
        "Also write a textured 3-D face per face: .obj/.mtl/_texture.png, .ply and a _turntable.png (see the README).",
    )
    flags.DEFINE_bool("neutral_mesh", False, "With --mesh: zero the fitted expression blendshapes (a neutral mesh).")
    flags.DEFINE_bool("save_aligned", False, "Also write the aligned 224 x 224 input crops (<photo>_aligned.png).")
    flags.DEFINE_enum(
        "detector",
        "auto",
        ["auto", "hog", "cnn"],
        "dlib face detector: auto = HOG, and its CNN detector for photos where HOG finds no face.",
    )
    flags.DEFINE_integer("batch_size", 16, "Faces per model call.")


# Every per-face file this command may write, as suffixes of the face's stem, and its own files:
# output names are chosen so that none of them is shared (batch.unique_stems).
FACE_FILE_SUFFIXES = ("", "_aligned", "_adjusted", "_texture", "_turntable")
RUN_FILES = ("grid", "turntables")


def output_names(faces_found) -> list:
    """A file stem per face, unique within the run (batch.unique_stems)."""
    from normalized_faces.batch import unique_stems

    return unique_stems(faces_found, FACE_FILE_SUFFIXES, RUN_FILES)


def normalize(model, faces_found, batch_size=16, progress=None):
    """Runs the model over the faces' aligned crops: a list of output dicts (numpy, one per face)."""
    from normalized_faces.batch import Progress

    results = []
    meter = Progress(len(faces_found), "faces normalized", progress)
    for start in range(0, len(faces_found), batch_size):
        meter.update(start)
        chunk = faces_found[start : start + batch_size]
        outputs = model(np.stack([found.aligned.image for found in chunk]).astype(np.float32) / 255.0)
        results += [{k: v[i] for k, v in outputs.items()} for i in range(len(chunk))]
    meter.update(len(faces_found))
    return results


def run(
    model_path,
    output_dir,
    photos,
    manifest=None,
    adjust_colors=False,
    save_aligned=False,
    detector="auto",
    batch_size=16,
    report=print,
    items=(),
    mesh=False,
    neutral_mesh=False,
) -> int:
    """The command, as a function; `items` adds (path, landmarks or None) pairs. Returns the exit code."""
    from normalized_faces import adjust, inference, visualize
    from normalized_faces.batch import usable_output_dir

    items = [(p, None) for p in photos] + list(items)
    if manifest:
        from normalized_faces.inputs import read_manifest

        try:
            items += [(entry.path, entry.landmarks) for entry in read_manifest(manifest)]
        except (OSError, ValueError) as error:
            report(f"--manifest {manifest}: cannot read it: {error}")
            return 2
    if not items:
        report("no photos given")
        return 2
    output_dir = usable_output_dir(output_dir, report)  # before the model loads: a bad folder costs nothing
    if output_dir is None:
        return 2
    try:
        model = inference.load_model(model_path)
    except inference.ModelLoadError as error:
        report(str(error))
        return 2
    faces_found, failed = collect_faces(items, detector, report)
    results = normalize(model, faces_found, batch_size) if faces_found else []
    rows, labels = [], []
    names = output_names(faces_found)
    if mesh and results:
        failed += write_meshes(faces_found, names, results, output_dir, neutral_mesh, report)
    for found, name, result in zip(faces_found, names, results):
        normalized = result["normalized_face"]
        visualize.write_png(output_dir / f"{name}.png", normalized)
        if save_aligned:
            visualize.write_png(output_dir / f"{name}_aligned.png", found.aligned.image)
        row = [found.aligned.image, normalized]
        if adjust_colors:
            adjusted = adjust.adjust_photo(found.photo, found.aligned.image, normalized)
            visualize.write_png(output_dir / f"{name}_adjusted.png", adjusted)
            row.append(adjust.adjust_photo(found.aligned.image, found.aligned.image, normalized))
        rows.append(row)
        labels.append(name[:24])
    if rows:
        titles = ["input (aligned)", "normalized"] + (["adjusted"] if adjust_colors else [])
        visualize.write_png(output_dir / "grid.png", visualize.image_grid(rows, labels=labels, column_titles=titles))
    report(
        f"normalized {len(faces_found)} faces from {len(items) - len(failed)} of {len(items)} photos with {model.kind} {model.source}; "
        f"wrote {output_dir}" + ("/grid.png" if rows else "") + (f"; {len(failed)} photos failed" if failed else "")
    )
    return 1 if failed else 0


def write_meshes(faces_found, names, results, output_dir, neutral, report) -> list:
    """Fits, colours and writes each face's mesh and turntable; a face whose landmarks cannot be
    fitted gets a line and the others go on. Returns the photos that failed."""
    import cv2

    from normalized_faces import visualize
    from normalized_faces.face3d import DegenerateLandmarks, FaceMeshBuilder

    builder = FaceMeshBuilder(neutral=neutral)
    failed, rows = [], []
    for found, name, result in zip(faces_found, names, results):
        try:
            (face_mesh,) = builder(result["normalized_face"][None], result["landmarks"][None])
        except DegenerateLandmarks as error:
            report(f"{found.photo_path}: cannot fit a 3-D face to face {found.index}: {error}")
            failed.append(found.photo_path)
            continue
        face_mesh.write(output_dir / name)
        size = result["normalized_face"].shape[0]
        aligned = found.aligned.image
        if aligned.shape[0] != size:  # a model whose output side differs from its input's
            aligned = cv2.resize(aligned, (size, size), interpolation=cv2.INTER_AREA)
        views = [aligned, result["normalized_face"], *face_mesh.turntable(size=size)]
        titles = ["photo (aligned)", "normalized", "-45", "-22.5", "0", "22.5", "45 degrees"]
        visualize.write_png(output_dir / f"{name}_turntable.png", visualize.image_grid([views], column_titles=titles))
        rows.append(views)
    if rows:
        visualize.write_png(output_dir / "turntables.png", visualize.image_grid(rows, column_titles=titles))
    return failed


def main(argv):
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required")
    photos = argv[1:]
    if not photos and not FLAGS.manifest:
        raise app.UsageError("give photos (or --manifest)")
    sys.exit(
        run(
            FLAGS.model,
            FLAGS.output_dir,
            photos,
            FLAGS.manifest,
            FLAGS.adjust_colors,
            FLAGS.save_aligned,
            FLAGS.detector,
            FLAGS.batch_size,
            mesh=FLAGS.mesh,
            neutral_mesh=FLAGS.neutral_mesh,
        )
    )


def entry_point():
    """The `normalize-face` console script."""
    from normalized_faces.config_flags import run_console_script

    run_console_script(__name__, define_flags, main)


if __name__ == "__main__":
    entry_point()
