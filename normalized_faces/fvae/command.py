"""edit-expression: change a photo's expression by moving its own pixels (Yeh et al.'s flow VAE).

    edit-expression --model=RUN --output_dir=OUT --to=neutral [--strength=1] [--steps=1] PHOTO ...
    edit-expression --model=RUN --output_dir=OUT --interpolate [--steps=6] PHOTO_A PHOTO_B

--model is a training run of `train_main.py --method=fvae`. Photos of any size: faces are found
with dlib and aligned as in data prep (as normalize-face does), the edit is computed on the
aligned face, and its flow is applied to the photo at the photo's own resolution and pasted back.
Per face it writes <photo>_<to>.png (the whole photo edited) and, with --steps=K > 1, the aligned
steps <photo>_<to>_<i>.png; grid.png shows a row per face: aligned input | steps. --to takes
neutral, smile or open_mouth; --strength scales the edit (above 1 exaggerates it). The edit's latent
step comes from the run's training photos: by default the mean step between photos of one person
whose heads are alike (--directions=paired), or the paper's difference of the labels' mean latents
(--directions=label_means, which on LFW moves the head too); the flow applied is by default what
the step adds to the flow the model draws for the unedited face (--norelative: the paper's, the
flow at the edited latent itself).
--interpolate takes exactly two photos (best of one person) and writes interpolation_<i>.png and
interpolation.png (Algorithm 2: each photo warped towards the blended latent, blended by the
model's confidence masks). Output names follow normalize-face's rules (unique within a run, never
grid.png, written through a temporary name). Unreadable photos and photos without a face get a line
each and the rest go on; --output_dir is checked before the model loads. A run folder given to
--model is code (its SavedModels can read and write files): use only models you trust.
Exit codes: 0 every photo edited; 1 some photos failed (the others were written); 2 nothing was
done (bad flags, output folder or model).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    from normalized_faces.fvae.editing import EDIT_TARGETS

    flags.DEFINE_string("model", None, "A training run of train_main.py --method=fvae (its model_dir).")
    flags.DEFINE_string("output_dir", None, "Where the edited photos and grid.png go.")
    flags.DEFINE_enum("to", "neutral", list(EDIT_TARGETS), "The expression to move each face towards.")
    flags.DEFINE_float("strength", 1.0, "How far: 1 takes the whole step from the face's expression to the target's.")
    flags.DEFINE_enum(
        "directions", "paired", ["paired", "label_means"],
        "The latent step between expressions: from pose-alike photos of one person, or the paper's label means.",
    )  # fmt: skip
    flags.DEFINE_bool(
        "relative",
        True,
        "Apply g(S, Z_edit) - g(S, Z(S)), the flow the edit adds (--norelative: g(S, Z_edit), the paper's).",
    )
    flags.DEFINE_integer("steps", 1, "Algorithm 1's K: write the edit in K steps (or K + 1 interpolation frames).")
    flags.DEFINE_bool("interpolate", False, "Interpolate between exactly two photos instead of editing.")
    flags.DEFINE_enum("detector", "auto", ["auto", "hog", "cnn"], "dlib face detector (as normalize-face).")


def run(
    model_dir,
    output_dir,
    photos,
    to="neutral",
    strength=1.0,
    steps=1,
    interpolate=False,
    detector="auto",
    report=print,
    directions="paired",
    relative=True,
) -> int:
    """The command, as a function. Returns the exit code."""
    import tensorflow as tf

    from normalized_faces import visualize
    from normalized_faces.batch import collect_faces, unique_stems, usable_output_dir
    from normalized_faces.fvae.editing import ExpressionEditor, paste_into_photo

    if steps < 1:
        report(f"--steps must be at least 1, got {steps}")
        return 2
    if interpolate and len(photos) != 2:
        report(f"--interpolate takes exactly two photos, got {len(photos)}")
        return 2
    if not photos:
        report("no photos given")
        return 2
    output_dir = usable_output_dir(output_dir, report)  # before the model loads: a bad folder costs nothing
    if output_dir is None:
        return 2
    try:
        editor = ExpressionEditor.from_run(model_dir, directions, relative)
    except (OSError, ValueError, KeyError, IndexError, RuntimeError, tf.errors.OpError) as error:
        report(f"--model {model_dir}: cannot edit with it: {' '.join(str(error).split())[:300]}")
        return 2
    found, failed = collect_faces([(p, None) for p in photos], detector, report)
    if interpolate:
        firsts = [next((f for f in found if str(f.photo_path) == str(p)), None) for p in photos]
        if any(face is None for face in firsts):
            report("interpolation needs a face in both photos")
            return 1
        frames = editor.interpolate(firsts[0].aligned.image, firsts[1].aligned.image, steps)
        for i, frame in enumerate(frames):
            visualize.write_png(output_dir / f"interpolation_{i}.png", frame)
        visualize.write_png(output_dir / "interpolation.png", visualize.image_grid([list(frames)]))
        report(f"interpolated {photos[0]} -> {photos[1]} in {steps} steps; wrote {output_dir}/interpolation.png")
        return 1 if failed else 0
    rows, labels = [], []
    # Per face: <stem>_<to>.png and the steps <stem>_<to>_<i>.png; the run's own files are reserved.
    suffixes = [f"_{to}"] + [f"_{to}_{step + 1}" for step in range(steps)]
    names = unique_stems(found, suffixes, reserved=["grid", "interpolation"])
    if found:
        result = editor.edit(
            np.stack([f.aligned.image for f in found]),
            np.stack([f.aligned.landmarks for f in found]),
            to,
            steps,
            strength,
        )
    for index, (face, name) in enumerate(zip(found, names)):
        edited = paste_into_photo(face.photo, face.aligned.photo_to_aligned, result["flows"][-1, index])
        visualize.write_png(output_dir / f"{name}_{to}.png", edited)
        if steps > 1:
            for step in range(steps):
                visualize.write_png(output_dir / f"{name}_{to}_{step + 1}.png", result["faces"][step, index])
        rows.append([face.aligned.image, *result["faces"][:, index]])
        labels.append(name[:24])
    if rows:
        titles = ["input (aligned)"] + [f"{to} {step + 1}/{steps}" for step in range(steps)]
        visualize.write_png(output_dir / "grid.png", visualize.image_grid(rows, labels=labels, column_titles=titles))
    report(
        f"edited {len(found)} faces towards {to} from {len(photos) - len(failed)} of {len(photos)} photos; "
        f"wrote {output_dir}" + ("/grid.png" if rows else "") + (f"; {len(failed)} photos failed" if failed else "")
    )
    return 1 if failed else 0


def main(argv):
    if not FLAGS.model or not FLAGS.output_dir:
        raise app.UsageError("--model and --output_dir are required")
    sys.exit(
        run(
            FLAGS.model,
            FLAGS.output_dir,
            argv[1:],
            FLAGS.to,
            FLAGS.strength,
            FLAGS.steps,
            FLAGS.interpolate,
            FLAGS.detector,
            directions=FLAGS.directions,
            relative=FLAGS.relative,
        )
    )


def entry_point():
    """The `edit-expression` console script."""
    from normalized_faces.config_flags import run_console_script

    run_console_script(__name__, define_flags, main)


if __name__ == "__main__":
    entry_point()
