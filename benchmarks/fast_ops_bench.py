"""normalized_faces/fast_ops against the plain forms they replace, operation by operation.

    python benchmarks/fast_ops_bench.py [--batch_size=8] [--runs=5] [--rounds=3] [--facenet]

Forward + backward (gradients w.r.t. inputs and weights), graph mode, ms per call, both forms
timed in alternating rounds: the texture decoder's four ResizeConv stages of the paper's decoder
(256 channels at 14 x 14), its 1024 -> 14 x 14 x 256 projection, and with --facenet (needs the
real weights) FaceNet's forward + backward w.r.t. its input chips. The training step as a whole:
benchmarks/train_bench.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from timing import side_by_side_ms  # noqa: E402

from normalized_faces import fast_ops, model  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 8, "Batch size.")
flags.DEFINE_integer("runs", 5, "Timed calls per round.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds.")
flags.DEFINE_bool("facenet", True, "Also time FaceNet (needs its weights: fetch-facenet-weights).")

# The paper's decoder: (input side, input channels, output channels) of each ResizeConv.
STAGES = [(14, 256, 128), (28, 128, 64), (56, 64, 32), (112, 32, 32)]


def gradient_function(forward, inputs, weights):
    """A tf.function giving the gradients of sum(forward(inputs)^2) w.r.t. inputs and weights."""

    def gradients():
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = tf.nest.flatten(forward(inputs))
            loss = tf.add_n([tf.reduce_sum(tf.square(o)) for o in outputs])
        return tape.gradient(loss, [inputs, *weights])

    return gradients


def plain_and_fast(gradients):
    """(plain, fast): the same function traced inside fast_ops.direct_formulations() and inside
    fast_ops.every_fast_formulation() (the fast form even where this CPU would not choose it)."""
    fast = tf.function(gradients)
    with fast_ops.every_fast_formulation():
        fast.get_concrete_function()
    with fast_ops.direct_formulations():
        plain = tf.function(gradients)
        plain.get_concrete_function()
    return plain, fast


def side_by_side(plain, fast):
    """(plain ms, fast ms): medians over --rounds alternating rounds of --runs calls."""
    timed = side_by_side_ms(
        {"plain": lambda: [g.numpy() for g in plain()], "fast": lambda: [g.numpy() for g in fast()]},
        FLAGS.rounds,
        FLAGS.runs,
    )
    return timed["plain"], timed["fast"]


def report(name, plain_ms, fast_ms, chosen=True):
    note = "" if chosen else "  (fast_ops keeps the plain form here, on this CPU)"
    print(f"  {name:<44} {plain_ms:8.1f} {fast_ms:8.1f} {plain_ms / fast_ms:7.2f}x{note}", flush=True)


def main(argv):
    del argv
    batch = FLAGS.batch_size
    print(f"batch {batch}, forward + backward, ms per call (median of {FLAGS.rounds} rounds of {FLAGS.runs})")
    convolution_forms = fast_ops.convolution_forms_pay_off()
    print(
        f"CPU {'with' if fast_ops.cpu_has_avx512() else 'without'} AVX-512: fast_ops "
        f"{'uses' if convolution_forms else 'keeps the plain form of'} the convolutions (phases, 1 x 1 as matmuls)"
    )
    print(f"  {'operation':<44} {'plain':>8} {'fast':>8} {'ratio':>8}")
    for side, c_in, c_out in STAGES:
        layer = model.ResizeConv(c_out)
        layer.build((batch, side, side, c_in))
        x = tf.random.normal([batch, side, side, c_in])
        kernel, bias = layer.conv.kernel, layer.conv.bias
        # Both forms called directly, so the stage below the threshold is timed by phases too.
        plain = tf.function(
            gradient_function(lambda x: fast_ops.resize_conv_direct(x, kernel, bias), x, [kernel, bias])
        )
        fast = tf.function(
            gradient_function(lambda x: fast_ops.resize_conv_by_phases(x, kernel, bias), x, [kernel, bias])
        )
        report(
            f"ResizeConv {side} -> {2 * side} px, {c_in} -> {c_out} ch, by phases",
            *side_by_side(plain, fast),
            chosen=side >= fast_ops.PHASES_MIN_SIDE and convolution_forms,
        )
    projection = model.WideDense(14 * 14 * 256)
    projection.build((batch, 1024))
    h = tf.random.normal([batch, 1024])
    report(
        "projection 1024 -> 50,176 (kernel-order gradient)",
        *side_by_side(*plain_and_fast(gradient_function(projection, h, projection.trainable_weights))),
    )
    if FLAGS.facenet:
        from normalized_faces.encoders import facenet

        network = facenet.build_facenet()
        chips = tf.random.uniform([batch, facenet.CHIP_SIZE, facenet.CHIP_SIZE, 3])
        report(
            "FaceNet, input gradient (1 x 1 convs as matmuls)",
            *side_by_side(*plain_and_fast(gradient_function(lambda c: network(c, training=False), chips, []))),
            chosen=convolution_forms,
        )
    keras.backend.clear_session()


if __name__ == "__main__":
    app.run(main)
