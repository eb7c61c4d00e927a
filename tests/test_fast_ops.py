"""fast_ops' fast formulations against an independent float64 oracle and against the direct ones."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from normalized_faces import fast_ops, model

RNG = np.random.default_rng(0)


def upsampling_matrix(size: int) -> np.ndarray:
    """[2 size, size]: bilinear x2 with half-pixel centres and clamped edges, from its definition
    (output j samples input coordinate (j + 0.5) / 2 - 0.5)."""
    matrix = np.zeros([2 * size, size])
    for j in range(2 * size):
        source = (j + 0.5) / 2 - 0.5
        low = int(np.floor(source))
        weight = source - low
        matrix[j, min(max(low, 0), size - 1)] += 1 - weight
        matrix[j, min(max(low + 1, 0), size - 1)] += weight
    return matrix


def oracle(x, kernel, bias):
    """Float64 numpy: upsample by the matrices above, zero-pad, 3 x 3 cross-correlation, bias."""
    up = np.einsum("yh,bhwc,xw->byxc", upsampling_matrix(x.shape[1]), x, upsampling_matrix(x.shape[2]))
    padded = np.pad(up, [(0, 0), (1, 1), (1, 1), (0, 0)])
    height, width = up.shape[1:3]
    out = np.zeros(up.shape[:3] + (kernel.shape[3],))
    for dy in range(3):
        for dx in range(3):
            out += padded[:, dy : dy + height, dx : dx + width] @ kernel[dy, dx]
    return out + bias


@pytest.mark.parametrize("height, width", [(2, 2), (2, 5), (5, 3), (14, 14), (29, 30)])
def test_resize_conv_by_phases_matches_the_float64_oracle(height, width):
    x = RNG.normal(size=[2, height, width, 3])
    kernel, bias = RNG.normal(size=[3, 3, 3, 4]), RNG.normal(size=[4])
    expected = oracle(x, kernel, bias)
    by_phases = fast_ops.resize_conv_by_phases(tf.constant(x), tf.constant(kernel), tf.constant(bias)).numpy()
    direct = fast_ops.resize_conv_direct(tf.constant(x), tf.constant(kernel), tf.constant(bias)).numpy()
    # Both run tf.image.resize somewhere (the direct path everywhere, the phases on the border
    # strips), which computes in float32: errors ~1e-7 of values ~10; 1e-5 leaves room, while a
    # wrong phase tap or a border pixel gone wrong is off by ~0.1-1.
    scale = np.abs(expected).max()
    assert np.abs(direct - expected).max() < 1e-6 * scale  # the oracle itself agrees with TF's resize
    assert np.abs(by_phases - expected).max() < 1e-6 * scale
    interior = (slice(None), slice(1, -1), slice(1, -1))
    # Inside the border ring no resize is involved: float64 throughout.
    assert np.abs(by_phases[interior] - expected[interior]).max() < 1e-12 * scale


def test_resize_conv_gradients_match_the_direct_formulation():
    x = tf.constant(RNG.normal(size=[2, 28, 29, 5]), tf.float32)
    kernel = tf.constant(RNG.normal(size=[3, 3, 5, 3]), tf.float32)
    bias = tf.constant(RNG.normal(size=[3]), tf.float32)
    weights = tf.constant(RNG.normal(size=[2, 56, 58, 3]), tf.float32)

    def gradients(function):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel, bias])
            loss = tf.reduce_sum(weights * function(x, kernel, bias))
        return tape.gradient(loss, [x, kernel, bias])

    for fast, slow in zip(gradients(fast_ops.resize_conv_by_phases), gradients(fast_ops.resize_conv_direct)):
        # float32 sums of ~3,000 terms of size ~10 in different orders: ~1e-5 relative.
        np.testing.assert_allclose(fast.numpy(), slow.numpy(), rtol=1e-4, atol=1e-4 * np.abs(slow.numpy()).max())


def _by_phases(function, x) -> bool:
    return any(op.type == "DepthToSpace" for op in function.get_concrete_function(x).graph.get_operations())


def test_resize_conv_layer_uses_phases_from_the_threshold_where_they_pay_off_and_direct_inside_the_context():
    layer = model.ResizeConv(4)
    side = fast_ops.PHASES_MIN_SIDE
    x = tf.constant(RNG.normal(size=[1, side, side, 3]), tf.float32)
    small = tf.constant(RNG.normal(size=[1, side - 1, side, 3]), tf.float32)
    layer.build(x.shape)
    with fast_ops.every_fast_formulation():
        fast = tf.function(layer)
        assert _by_phases(fast, x) and not _by_phases(fast, small)
    with fast_ops.direct_formulations(), fast_ops.every_fast_formulation():
        direct = tf.function(layer)  # direct wins over every_fast
        assert not _by_phases(direct, x)
    # By default, phases only where they measured faster: on CPUs without AVX-512.
    assert _by_phases(tf.function(layer), x) == (not fast_ops.cpu_has_avx512())
    np.testing.assert_allclose(fast(x).numpy(), direct(x).numpy(), rtol=1e-5, atol=1e-5)


def test_matmul_and_wide_dense_match_tensorflow():
    h = tf.constant(RNG.normal(size=[4, 6]))
    kernel = tf.constant(RNG.normal(size=[6, 50]))
    upstream = tf.constant(RNG.normal(size=[4, 50]))
    results = []
    for context in (fast_ops.direct_formulations, None):
        with tf.GradientTape() as tape:
            tape.watch([h, kernel])
            if context is None:
                product = fast_ops.matmul(h, kernel)
            else:
                with context():
                    product = fast_ops.matmul(h, kernel)
            loss = tf.reduce_sum(upstream * product)
        results.append([product, *tape.gradient(loss, [h, kernel])])
    for ours, theirs in zip(*results):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-12)
    np.testing.assert_allclose(results[1][1].numpy(), upstream.numpy() @ kernel.numpy().T, rtol=1e-12)

    dense, wide = keras.layers.Dense(7, activation="relu"), model.WideDense(7, activation="relu")
    dense.build((None, 6))
    wide.build((None, 6))
    wide.set_weights(dense.get_weights())
    np.testing.assert_allclose(wide(h).numpy(), dense(h).numpy(), rtol=1e-6)
