"""Speed and accuracy of the spline warp, side by side with the reference's algorithm.

    python benchmarks/warp_bench.py [--batch_sizes=1,16] [--runs=10] [--strides=2,4]

For each batch size: 224 x 224 x 3 images, 68 face-like landmarks moved onto another face's, 16
zero-flow border points, order 1. Prints the median ms per batch over --runs runs of forward and
forward+backward (gradients w.r.t. image and both point sets) for:

  reference-style  the reference's algorithm re-implemented in plain TF (tfa cannot be imported
                   with Keras 3): flattened-grid spline with |a|^2 - 2ab + |b|^2 distances in raw
                   coordinates, four batched gathers for bilinear sampling;
  exact            ours, flow_stride=1 (the default);
  coarse/s         ours, spline evaluated every s pixels and the flow upsampled;
  ... tf-ops       the same composed of TF ops only (no fused kernels: as in an exported SavedModel);

each as a tf.function (graph) and with jit_compile=True (XLA; the fused kernels have no XLA
lowering, so under XLA every variant composes TF ops). Then the coarse modes' flow and
image errors against exact, and the float32 error of ours and of the reference-style algorithm
against a float64 solution.

With --reference_python=PYTHON (an interpreter with TF 2.15 + tensorflow-addons 0.23, see
benchmarks/tfa_reference_worker.py), the real reference is timed side by side: the same inputs
are handed to a worker process running tfa.image.sparse_image_warp, and ours and tfa's are timed in
alternating blocks (--rounds of --runs calls each, graph mode, forward and forward + backward with
gradients w.r.t. image and destination points), so both see the same machine load. Prints the
medians and the ratios, and checks that both warps return the same image. --reference_allocator
sets the reference process's CPU allocator (system: TensorFlow's default; bfc: what ours runs with).

    python benchmarks/warp_bench.py --reference_python=/tmp/tfa/bin/python --batch_sizes=16

With --parts, first the forward + backward time of each part of the warp (the fit, the grid
evaluation per stride, the flow's upsampling, bilinear sampling) at the last batch size.
"""

from __future__ import annotations

import contextlib
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from timing import median_seconds  # noqa: E402

from normalized_faces import landmarks, train, warp  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("batch_sizes", ["1", "16"], "Batch sizes to time.")
flags.DEFINE_integer("runs", 10, "Timed runs per figure (the median is printed).")
flags.DEFINE_list("strides", ["2", "4"], "flow_stride values for the coarse mode.")
flags.DEFINE_integer("size", 224, "Image height and width.")
flags.DEFINE_integer("num_boundary_points", 4, "Border points per edge count n (4n points).")
flags.DEFINE_string(
    "reference_python", None, "Interpreter with TF 2.15 + tensorflow-addons 0.23: time the real reference side by side."
)
flags.DEFINE_bool("parts", False, "Also time the warp's parts (fit, grid evaluation, upsampling, sampling).")
flags.DEFINE_enum(
    "reference_allocator",
    "system",
    ["system", "bfc"],
    "With --reference_python: the reference process's CPU allocator: system (TensorFlow's default, malloc) or bfc "
    "(TF_CPU_ALLOCATOR_USE_BFC=true, what importing normalized_faces gives ours); tfa's time depends on it, ours "
    "hardly (the fused kernels allocate little).",
)
flags.DEFINE_integer("rounds", 5, "With --reference_python: alternating rounds (ours, tfa) per figure.")
flags.DEFINE_list(
    "reference_variants",
    ["exact", "coarse/2", "coarse/4", "exact tf-ops", "coarse/4 tf-ops"],
    "With --reference_python: our variants to compare: exact or coarse/S (the warp's defaults: fused kernels "
    "where they apply), ' tf-ops' appended: composed of TF ops only (as in an exported SavedModel).",
)


def reference_style_warp(image, source, dest, num_boundary_points):
    """The reference's algorithm (as documented in shared/oracles/tfa_spline/README.md), float32."""
    batch, height, width = image.shape[0], image.shape[1], image.shape[2]
    border = tf.tile(warp.border_points(height, width, num_boundary_points)[None], [batch, 1, 1])
    control = tf.concat([dest, border], 1)
    values = tf.concat([dest - source, tf.zeros_like(border)], 1)

    def squared_distance(a, b):
        return (
            tf.reduce_sum(a * a, 2)[:, :, None]
            - 2 * tf.matmul(a, b, transpose_b=True)
            + tf.reduce_sum(b * b, 2)[:, None, :]
        )

    count = control.shape[1]
    basis = tf.concat([control, tf.ones_like(control[..., :1])], 2)
    lhs = tf.concat(
        [
            tf.concat([tf.sqrt(tf.maximum(squared_distance(control, control), 1e-10)), basis], 2),
            tf.concat([tf.transpose(basis, [0, 2, 1]), tf.zeros([batch, 3, 3])], 2),
        ],
        1,
    )
    solution = tf.linalg.solve(lhs, tf.concat([values, tf.zeros([batch, 3, 2])], 1))
    ys, xs = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij")
    grid = tf.tile(tf.reshape(tf.stack([xs, ys], -1), [1, -1, 2]), [batch, 1, 1])
    kernel = tf.sqrt(tf.maximum(squared_distance(grid, control), 1e-10))
    flow = tf.matmul(kernel, solution[:, :count]) + tf.matmul(
        tf.concat([grid, tf.ones_like(grid[..., :1])], 2), solution[:, count:]
    )
    flow = tf.reshape(flow, [batch, height, width, 2])
    qx = xs[None] - flow[..., 0]
    qy = ys[None] - flow[..., 1]
    x0 = tf.clip_by_value(tf.floor(qx), 0.0, float(width - 2))
    y0 = tf.clip_by_value(tf.floor(qy), 0.0, float(height - 2))
    ax = tf.clip_by_value(qx - x0, 0.0, 1.0)[..., None]
    ay = tf.clip_by_value(qy - y0, 0.0, 1.0)[..., None]
    x0 = tf.cast(x0, tf.int32)
    y0 = tf.cast(y0, tf.int32)
    flat = tf.reshape(image, [batch, height * width, -1])

    def gather(y, x):
        return tf.gather(flat, y * width + x, batch_dims=1)

    top = gather(y0, x0) + ax * (gather(y0, x0 + 1) - gather(y0, x0))
    bottom = gather(y0 + 1, x0) + ax * (gather(y0 + 1, x0 + 1) - gather(y0 + 1, x0))
    return top + ay * (bottom - top), flow


def _median_ms(fn, args, runs):
    return 1000 * median_seconds(lambda: tf.nest.map_structure(lambda t: t.numpy(), fn(*args)), runs)


def _forward_and_backward(warp_fn):
    def run(image, source, dest):
        with tf.GradientTape() as tape:
            tape.watch([image, source, dest])
            warped, _ = warp_fn(image, source, dest)
            loss = tf.reduce_sum(tf.square(warped))
        return tape.gradient(loss, [image, source, dest])

    return run


def _problem(batch, size, seed=0):
    rng = np.random.default_rng(seed)
    scale = size / 224.0
    image = rng.uniform(size=[batch, size, size, 3]).astype(np.float32)
    source = (landmarks.random_face_landmarks(rng, batch) * scale).astype(np.float32)
    dest = (landmarks.random_face_landmarks(rng, batch) * scale).astype(np.float32)
    return image, source, dest


def _gradients_image_dest(warp_fn):
    """Forward + backward as the training step needs it: gradients w.r.t. image and dest points."""

    def run(image, source, dest):
        with tf.GradientTape() as tape:
            tape.watch([image, dest])
            warped, _ = warp_fn(image, source, dest)
            loss = tf.reduce_sum(tf.square(warped))
        return tape.gradient(loss, [image, dest])

    return run


def _our_variant(name, num_boundary_points):
    """ "exact" or "coarse/S" (fused kernels where they apply), with " tf-ops": TF ops only."""
    mode, _, kernels = name.partition(" ")
    if kernels not in ("", "tf-ops") or not (mode == "exact" or mode.startswith("coarse/")):
        raise ValueError(f"unknown variant {name!r}: exact or coarse/S, optionally followed by ' tf-ops'")
    stride = 1 if mode == "exact" else int(mode.split("/")[1])

    def run(image, source, dest):
        # Entered while tf.function traces: the graph keeps the ops chosen here.
        with warp.portable_ops() if kernels else contextlib.nullcontext():
            return warp.sparse_image_warp(
                image, source, dest, num_boundary_points=num_boundary_points, flow_stride=stride
            )

    return run


def compare_with_reference(reference_python, batch, runs, rounds, n, variant_names):
    """Ours and tfa's sparse_image_warp timed in alternating blocks on the same inputs."""
    import subprocess
    import tempfile

    worker = pathlib.Path(__file__).with_name("tfa_reference_worker.py")
    image, source, dest = _problem(batch, FLAGS.size)
    with tempfile.TemporaryDirectory() as folder:
        problem = pathlib.Path(folder) / "problem.npz"
        np.savez(problem, image=image, source=source, dest=dest, num_boundary_points=n)
        process = subprocess.Popen(
            [reference_python, str(worker), str(problem)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "TF_CPP_MIN_LOG_LEVEL": "2",
                "TF_CPU_ALLOCATOR_USE_BFC": "true" if FLAGS.reference_allocator == "bfc" else "false",
            },
        )

        def ask(command):
            process.stdin.write(command + "\n")
            process.stdin.flush()
            return process.stdout.readline().strip()

        ready = process.stdout.readline().strip()
        if not ready.startswith("ready"):
            raise RuntimeError(f"the reference worker did not start under {reference_python}: {ready!r}")
        print(
            f"\nside by side with the real reference ({ready[6:]}, in {reference_python}), batch {batch}, "
            f"{FLAGS.size}x{FLAGS.size}x3, 68 points + {4 * n} border, order 1, graph mode; CPU allocator: "
            f"ours {train.cpu_allocator()}, the reference's {FLAGS.reference_allocator};"
        )
        print(f"{rounds} alternating rounds of {runs} calls; median ms of the round medians")
        args = [tf.constant(x) for x in (image, source, dest)]
        reference_sum = float(ask("check"))
        ours = {}
        for name in variant_names:
            fn = _our_variant(name, n)
            ours[name] = {
                "fwd": tf.function(lambda i, s, d, fn=fn: fn(i, s, d)[0]),
                "fwb": tf.function(_gradients_image_dest(fn)),
            }
            if name == "exact":
                our_sum = float(tf.reduce_sum(ours[name]["fwd"](*args)))
                relative = abs(our_sum - reference_sum) / abs(reference_sum)
                print(f"same image: sum of ours {our_sum:.3f} vs tfa {reference_sum:.3f} (relative {relative:.1e})")
        print(f"{'variant':<16} {'fwd ms':>8} {'tfa fwd':>8} {'ratio':>7}   {'f+b ms':>8} {'tfa f+b':>8} {'ratio':>7}")
        for name, functions in ours.items():
            row = []
            for kind in ("fwd", "fwb"):
                mine, theirs = [], []
                for _ in range(rounds):
                    mine.append(
                        1000
                        * median_seconds(
                            lambda: tf.nest.map_structure(lambda t: t.numpy(), functions[kind](*args)), runs
                        )
                    )
                    theirs.append(float(ask(f"{kind} {runs}")))
                row += [float(np.median(mine)), float(np.median(theirs))]
            print(
                f"{name:<16} {row[0]:>8.1f} {row[1]:>8.1f} {row[1] / row[0]:>6.1f}x   "
                f"{row[2]:>8.1f} {row[3]:>8.1f} {row[3] / row[2]:>6.1f}x",
                flush=True,
            )
        ask("quit")
        process.wait(timeout=60)


def time_parts(batch, n, strides, runs):
    """Forward + backward of the warp's parts, each in graph mode on the fused path where it applies:
    the spline fit, its evaluation on the pixel grid (exact and per stride), the coarse flow's
    upsampling, and bilinear sampling by a flow."""
    image, source, dest = [tf.constant(x) for x in _problem(batch, FLAGS.size)]
    size = FLAGS.size

    def gradient_of(compute, watched):
        @tf.function
        def run():
            with tf.GradientTape() as tape:
                tape.watch(watched)
                loss = tf.add_n([tf.reduce_sum(tf.square(t)) for t in tf.nest.flatten(compute())])
            return tape.gradient(loss, watched)

        return run

    def fit():
        return warp._fit_warp(image, source, dest, 1, 0.0, n, None)[1]

    def grid(stride):
        positions = tf.range(size, dtype=tf.float32) if stride == 1 else warp._flow_grid(size, stride, tf.float32)[0]
        return lambda: warp.evaluate_spline_on_grid(fit(), positions, positions)

    parts = {"spline fit": gradient_of(lambda: fit()[:3], [dest])}
    for stride in [1] + strides:
        parts[f"fit + grid evaluation, stride {stride}"] = gradient_of(grid(stride), [dest])
    for stride in strides:
        count = int(warp._flow_grid(size, stride, tf.float32)[0].shape[0])
        coarse = tf.Variable(tf.random.normal([batch, count, count, 2]))
        upsample = warp._flow_grid(size, stride, tf.float32)[1]
        parts[f"flow upsampling, stride {stride}"] = gradient_of(
            lambda coarse=coarse, upsample=upsample: warp._upsample_flow(coarse, upsample, upsample),
            [coarse],
        )
    flow = tf.Variable(tf.random.normal([batch, size, size, 2]) * 3.0)
    parts["bilinear sampling by a flow"] = gradient_of(lambda: warp.dense_image_warp(image, flow), [image, flow])
    print(f"\nparts, forward + backward, batch {batch} (median ms of {runs})")
    for name, function in parts.items():
        ms = _median_ms(function, [], runs)
        print(f"  {name:<38} {ms:8.1f}", flush=True)


def main(argv):
    del argv
    if FLAGS.parts:
        time_parts(int(FLAGS.batch_sizes[-1]), FLAGS.num_boundary_points, [int(s) for s in FLAGS.strides], FLAGS.runs)
    if FLAGS.reference_python:
        for batch in [int(b) for b in FLAGS.batch_sizes]:
            compare_with_reference(
                FLAGS.reference_python,
                batch,
                FLAGS.runs,
                FLAGS.rounds,
                FLAGS.num_boundary_points,
                FLAGS.reference_variants,
            )
        return
    strides = [int(s) for s in FLAGS.strides]
    n = FLAGS.num_boundary_points
    variants = {"reference-style": lambda i, s, d: reference_style_warp(i, s, d, n)}
    for kernels in ("", " tf-ops"):
        for mode in ["exact"] + [f"coarse/{stride}" for stride in strides]:
            variants[mode + kernels] = _our_variant(mode + kernels, n)
    print(
        f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs; {FLAGS.size}x{FLAGS.size}x3, 68 points + {4 * n} border, order 1"
    )
    print(f"median of {FLAGS.runs} runs, ms per batch")
    header = (
        f"{'batch':>5}  {'variant':<16} {'fwd graph':>10} {'fwd XLA':>10} {'f+b graph':>10} {'f+b XLA':>10}   "
        "speed-up vs reference-style (graph fwd / f+b)"
    )
    print(header)
    for batch in [int(b) for b in FLAGS.batch_sizes]:
        args = [tf.constant(x) for x in _problem(batch, FLAGS.size)]
        baseline = None
        for name, fn in variants.items():
            figures = [
                _median_ms(tf.function(fn), args, FLAGS.runs),
                _median_ms(tf.function(fn, jit_compile=True), args, FLAGS.runs),
                _median_ms(tf.function(_forward_and_backward(fn)), args, FLAGS.runs),
                _median_ms(tf.function(_forward_and_backward(fn), jit_compile=True), args, FLAGS.runs),
            ]
            baseline = baseline or figures
            speedup = f"{baseline[0] / figures[0]:.1f}x / {baseline[2] / figures[2]:.1f}x"
            print(f"{batch:>5}  {name:<16} " + " ".join(f"{f:>10.1f}" for f in figures) + f"   {speedup}", flush=True)

    print("\naccuracy (batch 16, order 1)")
    image, source, dest = _problem(16, FLAGS.size, seed=1)
    exact64, flow64 = warp.sparse_image_warp(
        image.astype(np.float64), source.astype(np.float64), dest.astype(np.float64), num_boundary_points=n
    )
    exact, flow = warp.sparse_image_warp(image, source, dest, num_boundary_points=n)
    reference, reference_flow = reference_style_warp(*[tf.constant(x) for x in (image, source, dest)], n)
    for name, (img, fl) in {
        "ours exact float32": (exact, flow),
        "reference-style float32": (reference, reference_flow),
    }.items():
        print(
            f"  {name:<26} vs float64: flow max {np.abs(fl.numpy() - flow64.numpy()).max():.2e} px, "
            f"image max {np.abs(img.numpy() - exact64.numpy()).max():.2e}"
        )
    for stride in strides:
        coarse, coarse_flow = warp.sparse_image_warp(image, source, dest, num_boundary_points=n, flow_stride=stride)
        flow_error = np.abs(coarse_flow.numpy() - flow.numpy())
        image_error = np.abs(coarse.numpy() - exact.numpy())
        print(
            f"  coarse/{stride:<19} vs exact:   flow mean {flow_error.mean():.4f} max {flow_error.max():.3f} px, "
            f"image mean {image_error.mean():.5f} max {image_error.max():.3f}"
        )


if __name__ == "__main__":
    app.run(main)
