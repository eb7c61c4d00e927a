"""`make demo`: what the project can do now, offline, on a built-in default.

Currently: the differentiable spline warp on a generated face. A synthetic photo with known
landmarks is warped so that its landmarks move onto the template's (frontal, eyes level, mouth
closed): the operation the model's renderer performs. Writes one PNG (source with its points |
flow | warped result with the target points) and says where it is.

    python -m normalized_faces.demo [--output_dir=demo_output] [--seed=0]
"""

from __future__ import annotations

import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "demo_output", "Where the demo writes its pictures.")
flags.DEFINE_integer("seed", 0, "Seed of the generated face.")
flags.DEFINE_integer("flow_stride", 1, "1: exact warp; s > 1: coarse flow (faster, see README).")


def run_warp_demo(output_dir: pathlib.Path, seed: int = 0, flow_stride: int = 1) -> pathlib.Path:
    """Warps a synthetic face onto the template landmarks; returns the PNG's path."""
    from data_prep import synthetic
    from normalized_faces import landmarks, visualize, warp

    rng = np.random.default_rng(seed)
    identity = synthetic.random_identity(rng, "demo")
    photo, source = synthetic.synthetic_photo(identity, rng, roll_deg=12, mouth_open=6.0, smile=3.0)
    target = landmarks.template_landmarks()
    start = time.perf_counter()
    warped, flow = warp.sparse_image_warp(
        photo[None].astype(np.float32) / 255.0,
        source[None].astype(np.float32),
        target[None].astype(np.float32),
        flow_stride=flow_stride,
    )
    seconds = time.perf_counter() - start
    flow = flow[0].numpy()
    sheet = visualize.image_grid(
        [
            [
                visualize.draw_landmarks(photo, source),
                visualize.draw_flow_arrows(visualize.flow_to_rgb(flow), flow),
                visualize.draw_landmarks(warped[0].numpy(), target, color=(40, 200, 40)),
            ]
        ],
        column_titles=["photo + its landmarks", "flow (arrows: from -> to)", "warped + template landmarks"],
        scale=2,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "warp_demo.png"
    visualize.write_png(path, sheet)
    magnitude = np.hypot(flow[..., 0], flow[..., 1])
    print(f"warped a 224x224 face: 68 landmarks + 16 border points, order 1, {1000 * seconds:.0f} ms (first call includes tracing)")
    print(f"flow: mean {magnitude.mean():.2f} px, max {magnitude.max():.2f} px")
    return path


def main(argv):
    del argv
    path = run_warp_demo(pathlib.Path(FLAGS.output_dir), FLAGS.seed, FLAGS.flow_stride)
    print(f"wrote {path.resolve()}")


if __name__ == "__main__":
    app.run(main)
