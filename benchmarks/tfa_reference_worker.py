"""The reference, tensorflow-addons' sparse_image_warp, timed on request (run by warp_bench.py).

    REFERENCE_PYTHON benchmarks/tfa_reference_worker.py PROBLEM.npz

Runs under another interpreter: TF 2.15 + tensorflow-addons 0.23 in their own venv (tfa cannot be
imported beside Keras 3), e.g.

    python3 -m venv /tmp/tfa && /tmp/tfa/bin/pip install tensorflow-cpu==2.15.1 tensorflow-addons==0.23.0

Reads the problem (image, source, dest as (x, y) points; num_boundary_points) from PROBLEM.npz,
converts the points to tfa's (y, x) order, and builds tf.functions for the forward warp and for
forward + backward (gradients w.r.t. image and destination points, as a training step needs).
Then reads lines from stdin: "fwd K" or "fwb K" times K calls (after the first, untimed, warm-up
call of each function) and prints the median ms; "check" prints the warped image's checksum;
"quit" ends. This file must not import this project (it runs without it).
"""

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_addons as tfa  # noqa: E402


def main():
    problem = np.load(sys.argv[1])
    image = tf.constant(problem["image"])
    source = tf.constant(problem["source"][..., ::-1].copy())  # tfa's points are (y, x)
    dest = tf.constant(problem["dest"][..., ::-1].copy())
    boundary = int(problem["num_boundary_points"])

    @tf.function
    def forward(image, source, dest):
        return tfa.image.sparse_image_warp(image, source, dest, interpolation_order=1, num_boundary_points=boundary)[0]

    @tf.function
    def forward_backward(image, source, dest):
        with tf.GradientTape() as tape:
            tape.watch([image, dest])
            warped = tfa.image.sparse_image_warp(
                image, source, dest, interpolation_order=1, num_boundary_points=boundary
            )[0]
            loss = tf.reduce_sum(tf.square(warped))
        return tape.gradient(loss, [image, dest])

    functions = {"fwd": forward, "fwb": forward_backward}
    for function in functions.values():
        tf.nest.map_structure(lambda t: t.numpy(), function(image, source, dest))  # trace + warm up
    print(f"ready tensorflow {tf.__version__} addons {tfa.__version__}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] == "check":
            print(float(tf.reduce_sum(forward(image, source, dest)).numpy()), flush=True)
            continue
        function, runs = functions[words[0]], int(words[1])
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), function(image, source, dest))
            times.append(time.perf_counter() - start)
        print(f"{1000 * statistics.median(times):.3f}", flush=True)


if __name__ == "__main__":
    main()
