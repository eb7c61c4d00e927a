"""Our 3-D fit (normalized_faces/face3d) against eos-py's on the same landmarks: the reference the
issue names.

    python -m experiments.face3d_eos [--people=20] [--shared_3dmm=../shared/3dmm] [--figures_dir=docs/results]

For the first photo of each of `--people` test people (the committed split; nothing here is tuned):
the shipped model's normalized face and landmarks, fitted by ours (perspective, scale + translation,
gradient descent) and by eos (`fit_shape_and_pose`: scaled orthographic pose, 5 iterations of its
linear shape, blendshape and contour fits). Prints per face and on average: the landmark
reprojection error of each (pixels at 224, over the 50 landmarks with a fixed vertex), and the
agreement of the two shapes (RMS vertex distance in mm after removing scale and translation,
beside the distance of the mean face from eos's shape), once at our default landmark sigma and once
at the sigma that matches eos's regularization. --figures_dir also runs `normalize-face --mesh` on
the first photo of the three test people with the most photos and writes its turntables.png there,
halved, as face3d_turntables.png (the README's figure).
"""

from __future__ import annotations

import pathlib

import numpy as np
from absl import app, flags

from experiments import lfw_split

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS


def define_flags():
    """The command's flags, defined on use: tests import compare() beside other experiments that
    define --lfw too."""
    flags.DEFINE_string("lfw", str(REPO.parent / "shared" / "faces" / "lfw"), "LFW deep-funneled.")
    flags.DEFINE_string("shared_3dmm", str(REPO.parent / "shared" / "3dmm"), "eos's share/ files.")
    flags.DEFINE_integer("people", 20, "Test people (their first photo).")
    flags.DEFINE_string("figures_dir", None, "Also write face3d_turntables.png here (e.g. docs/results).")


class EosFitter:
    """eos-py's landmark fit with the same model (eos's own files)."""

    def __init__(self, shared_3dmm):
        import eos

        self.eos = eos
        shared = pathlib.Path(shared_3dmm)
        loaded = eos.morphablemodel.load_model(str(shared / "sfm_shape_3448.bin"))
        blendshapes = eos.morphablemodel.load_blendshapes(str(shared / "expression_blendshapes_3448.bin"))
        self.model = eos.morphablemodel.MorphableModel(
            loaded.get_shape_model(),
            blendshapes,
            color_model=eos.morphablemodel.PcaModel(),
            vertex_definitions=None,
            texture_coordinates=loaded.get_texture_coordinates(),
        )
        self.mapper = eos.core.LandmarkMapper(str(shared / "ibug_to_sfm.txt"))
        self.edges = eos.morphablemodel.load_edge_topology(str(shared / "sfm_3448_edge_topology.json"))
        self.contour_landmarks = eos.fitting.ContourLandmarks.load(str(shared / "ibug_to_sfm.txt"))
        self.model_contour = eos.fitting.ModelContour.load(str(shared / "sfm_model_contours.json"))

    def __call__(self, landmarks: np.ndarray, image_size: int):
        """(model-frame vertices [V, 3], projected vertices [V, 2] in pixels, shape coefficients)."""
        points = [self.eos.core.Landmark(str(i + 1), [float(x), float(y)]) for i, (x, y) in enumerate(landmarks)]
        mesh, pose, shape, expression = self.eos.fitting.fit_shape_and_pose(
            self.model, points, self.mapper, image_size, image_size,
            self.edges, self.contour_landmarks, self.model_contour,
        )  # fmt: skip
        vertices = np.asarray(mesh.vertices, np.float64)
        homogeneous = np.concatenate([vertices, np.ones([len(vertices), 1])], axis=-1)
        clip = homogeneous @ (np.asarray(pose.get_projection()) @ np.asarray(pose.get_modelview())).T
        ndc = clip[:, :2] / clip[:, 3:]
        # OpenGL's viewport (0, height, width, -height): window y grows downwards like the image's.
        projected = np.stack([(ndc[:, 0] + 1) * image_size / 2, (1 - ndc[:, 1]) * image_size / 2], axis=-1)
        return vertices, projected, np.asarray(shape)


def aligned_rms(a: np.ndarray, b: np.ndarray) -> float:
    """RMS distance of vertex sets [V, 3] after moving and uniformly scaling a onto b (no rotation:
    both fits are frontal)."""
    a0, b0 = a - a.mean(0), b - b.mean(0)
    scale = (a0 * b0).sum() / (a0 * a0).sum()
    return float(np.sqrt(((scale * a0 - b0) ** 2).sum(-1).mean()))


def reprojection_error(projected, landmarks, landmark_vertices, used) -> float:
    """Mean pixel distance between the landmarks `used` and their vertices' projections."""
    return float(np.linalg.norm(projected[landmark_vertices[used]] - landmarks[used], axis=-1).mean())


def compare(faces, landmarks, shared_3dmm, landmark_sigma=None) -> list[dict]:
    """Per face: ours' and eos's reprojection error (px over the landmarks with a fixed vertex),
    and shape RMS (mm) of ours and of the mean face against eos's."""
    from normalized_faces.face3d import fit as fitting

    fitter = fitting.LandmarkFitter(landmark_sigma=landmark_sigma or fitting.LANDMARK_SIGMA)
    model = fitter.model
    reference = EosFitter(shared_3dmm)
    size = faces.shape[1]
    fixed = np.where(model.landmark_vertices >= 0)[0]
    rows = []
    for points, ours in zip(landmarks, fitter.fit(landmarks, size)):
        eos_vertices, eos_projected, _ = reference(points, size)
        rows.append(
            {
                "ours_px": reprojection_error(ours.projected(model), points, model.landmark_vertices, fixed),
                "eos_px": reprojection_error(eos_projected, points, model.landmark_vertices, fixed),
                "shape_rms_mm": aligned_rms(ours.vertices(model), eos_vertices),
                "mean_face_rms_mm": aligned_rms(model.mean.astype(np.float64), eos_vertices),
            }
        )
    return rows


def main(argv):
    del argv
    from normalized_faces import inference
    from normalized_faces.cli import collect_faces

    people, split = lfw_split.load_split(FLAGS.lfw)
    names = split["test"][: FLAGS.people]
    found, _ = collect_faces([(people[name][0], None) for name in names], report=lambda line: None)
    found = [face for face in found if face.index == 0]
    out = inference.load_model(None)(np.stack([f.aligned.image for f in found]).astype(np.float32) / 255.0)
    from normalized_faces.face3d import fit as fitting

    faces, landmarks = np.asarray(out["normalized_face"]), np.asarray(out["landmarks"], np.float64)
    for label, sigma in (
        ("default landmark sigma (2 px)", fitting.LANDMARK_SIGMA),
        ("eos-equivalent sigma (9.5 px)", fitting.EOS_EQUIVALENT_SIGMA),
    ):
        rows = compare(faces, landmarks, FLAGS.shared_3dmm, sigma)
        print(f"\nours at the {label}, on the first photo of {len(rows)} test people:")
        print("| face | ours (px) | eos (px) | shape: ours vs eos (mm) | mean face vs eos (mm) |")
        print("|---|---|---|---|---|")
        for face, row in zip(found, rows):
            cells = " | ".join(f"{row[key]:.2f}" for key in ("ours_px", "eos_px", "shape_rms_mm", "mean_face_rms_mm"))
            print(f"| {face.photo_path.stem} | {cells} |")
        mean = " | ".join(f"{np.mean([row[key] for row in rows]):.2f}" for key in rows[0])
        print(f"| mean of {len(rows)} | {mean} |")
    if FLAGS.figures_dir:
        write_figure(people, split, pathlib.Path(FLAGS.figures_dir))


def write_figure(people, split, figures_dir: pathlib.Path):
    import tempfile

    from PIL import Image

    from normalized_faces import cli

    names = sorted(split["test"], key=lambda name: -len(people[name]))[:3]
    with tempfile.TemporaryDirectory() as output_dir:
        code = cli.run(None, output_dir, [str(people[name][0]) for name in names], mesh=True)
        if code:
            raise SystemExit(f"normalize-face --mesh failed on {names}")
        grid = Image.open(pathlib.Path(output_dir) / "turntables.png")
        grid = grid.resize((grid.width // 2, grid.height // 2), Image.LANCZOS)
    figures_dir.mkdir(parents=True, exist_ok=True)
    path = figures_dir / "face3d_turntables.png"
    grid.quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"wrote {path} ({', '.join(names)}: the test people with the most photos, their first photo)")


if __name__ == "__main__":
    define_flags()
    app.run(main)
