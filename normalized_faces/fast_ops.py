"""Faster, exactly equivalent formulations of the training step's heavy operations (issue 10).

  resize_conv(x, kernel, bias)   bilinear x2 upsampling, then a 3 x 3 'SAME' convolution: the
                                 texture decoder's ResizeConv. Computed as one 3 x 3 convolution of
                                 the *low-resolution* input into the four output phases (2 x 2 x
                                 channels), rearranged by depth_to_space; only the outermost ring of
                                 output pixels, where the convolution's zero padding meets the
                                 resize's clamped edge, is recomputed the direct way on two-pixel
                                 strips. Same multiply-adds, but no upsampled tensor and wider
                                 convolutions, which oneDNN runs faster on this CPU.
  matmul(h, kernel)              h @ kernel whose input gradient is computed as (kernel @ dy^T)^T,
                                 reading the kernel in its stored order: TensorFlow's MatMul gradient
                                 (dy @ kernel^T, transpose_b) ran ~6x slower for the texture
                                 decoder's 1024 x 50,176 projection on this CPU.
  pointwise_conv(x, kernel)      a 1 x 1, stride-1 convolution as that matmul over the pixels:
                                 FaceNet's 73 such convolutions, whose backward pass (the identity
                                 loss's) oneDNN ran at ~10 GFLOP/s on small feature maps.

Which forms pay off depends on the CPU (`python benchmarks/fast_ops_bench.py`, batch 8, forward +
backward, on the two kinds of 2-core machine seen here):

  form                      AMD EPYC, AVX2        Intel Xeon, AVX-512 + AMX
  resize_conv by phases     1.17-1.38x (28 px up) 0.67-0.74x
  pointwise_conv (FaceNet)  1.09x                 0.96x
  matmul (projection)       1.78x                 1.14x

so the two convolution forms are used only on CPUs without AVX-512 (oneDNN's AVX-512 direct
convolutions handle the narrow, upsampled layers well there), the matmul everywhere. Within
`direct_formulations()` (at tracing time) all run the plain way: the path before, kept for
benchmarks/train_bench.py's "before" and for the tests that compare the two; within
`every_fast_formulation()` all run the fast way whatever the CPU (benchmarks and tests).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from normalized_faces.cpu_flags import cpu_flags
from normalized_faces.trace_switch import TraceSwitch

_direct = TraceSwitch()
_every_fast = TraceSwitch()

# The smallest input side at which resize_conv uses phases. Measured on a 2-core AMD EPYC (AVX2),
# batch 8, forward + backward: 14 x 14 x 256 -> 128 channels, phases 169 ms vs direct 127 ms;
# 28 x 28 x 128 -> 64 and larger, phases 1.2-1.6x faster (benchmarks/train_bench.py for the step).
PHASES_MIN_SIDE = 28

# Bilinear x2 upsampling with half-pixel centres (tf.image.resize) makes output 2i from inputs i-1
# and i (weights 1/4, 3/4) and output 2i + 1 from i and i+1 (3/4, 1/4). A 3-tap filter k0, k1, k2 on
# outputs 2i + p - 1, 2i + p, 2i + p + 1 therefore reads inputs i-1, i, i+1 with weights
# _PHASE_TAPS[p] @ (k0, k1, k2): one 3-tap filter per output phase p, applied to the input.
_PHASE_TAPS = np.array(
    [
        [[0.75, 0.25, 0.0], [0.25, 0.75, 0.75], [0.0, 0.0, 0.25]],  # p = 0
        [[0.25, 0.0, 0.0], [0.75, 0.75, 0.25], [0.0, 0.25, 0.75]],  # p = 1
    ]
)


def direct_formulations():
    """Within this context (when a function is traced) resize_conv upsamples then convolves, and
    matmul and pointwise_conv are TensorFlow's MatMul and Conv2D with their own gradients."""
    return _direct.turned_on()


def every_fast_formulation():
    """Within this context (when a function is traced, and not inside direct_formulations) the
    convolution forms run the fast way even on a CPU where they lose (convolution_forms_pay_off)."""
    return _every_fast.turned_on()


def cpu_has_avx512() -> bool:
    """Whether this CPU has AVX-512 (Linux /proc/cpuinfo flag avx512f)."""
    return "avx512f" in cpu_flags()


def convolution_forms_pay_off() -> bool:
    """Whether resize_conv by phases and pointwise_conv as matmuls run here (at tracing time): on
    CPUs without AVX-512, or inside every_fast_formulation(); never inside direct_formulations()."""
    if _direct:
        return False
    return bool(_every_fast) or not cpu_has_avx512()


def _upsample(x):
    # tf.image.resize answers float32 for any float input; keep x's dtype.
    return tf.cast(tf.image.resize(x, tf.shape(x)[1:3] * 2, method="bilinear"), x.dtype)


def resize_conv_direct(x, kernel, bias):
    """Bilinear x2 upsampling then a 3 x 3 'SAME' convolution plus bias.

    Args:
      x: [B, H, W, C_in].
      kernel: [3, 3, C_in, C_out]; bias: [C_out].
    Returns:
      [B, 2H, 2W, C_out].
    """
    return tf.nn.bias_add(tf.nn.conv2d(_upsample(x), kernel, 1, "SAME"), bias)


def _phase_kernel(kernel):
    """[3, 3, C_in, C_out] -> [3, 3, C_in, 4 C_out], output channels ordered (row phase, column
    phase, C_out) as depth_to_space(2) reads them."""
    taps = tf.constant(_PHASE_TAPS, kernel.dtype)
    c_in, c_out = kernel.shape[2], kernel.shape[3]
    phases = tf.einsum("yac,xbd,cdio->abiyxo", taps, taps, kernel)
    return tf.reshape(phases, [3, 3, c_in, 4 * c_out])


def _ring(x, kernel):
    """The direct formulation's outermost output rows and columns, from two-pixel strips of x.

    Returns rows [2B, 1, 2W, C_out] (top for the first B images, bottom for the rest) and
    columns [2B, 2H, 1, C_out] (left, right), without bias.
    """
    height, width = x.shape[1], x.shape[2]
    zeros = tf.zeros_like
    # Rows 0, 1 and H-2, H-1 upsample (edges clamped, as in the whole image) to output rows
    # 0, 1 and 2H-2, 2H-1; the convolution's zero padding supplies the row beyond.
    strips = _upsample(tf.concat([x[:, :2], x[:, height - 2 :]], 0))  # [2B, 4, 2W, C]
    top, bottom = tf.split(strips, 2, axis=0)
    top = tf.concat([zeros(top[:, :1]), top[:, :2]], 1)
    bottom = tf.concat([bottom[:, 2:], zeros(bottom[:, :1])], 1)
    rows = tf.nn.conv2d(tf.concat([top, bottom], 0), kernel, 1, [[0, 0], [0, 0], [1, 1], [0, 0]])
    strips = _upsample(tf.concat([x[:, :, :2], x[:, :, width - 2 :]], 0))  # [2B, 2H, 4, C]
    left, right = tf.split(strips, 2, axis=0)
    left = tf.concat([zeros(left[:, :, :1]), left[:, :, :2]], 2)
    right = tf.concat([right[:, :, 2:], zeros(right[:, :, :1])], 2)
    columns = tf.nn.conv2d(tf.concat([left, right], 0), kernel, 1, [[0, 0], [1, 1], [0, 0], [0, 0]])
    return rows, columns


def resize_conv_by_phases(x, kernel, bias):
    """resize_conv_direct's result, computed at the input's resolution (see the module docstring).

    Args:
      x: [B, H, W, C_in], H and W known and >= 2.
      kernel: [3, 3, C_in, C_out]; bias: [C_out].
    Returns:
      [B, 2H, 2W, C_out], equal to resize_conv_direct(x, kernel, bias) up to float rounding.
    """
    height, width = x.shape[1], x.shape[2]
    c_out = kernel.shape[3]
    # Edge padding reproduces the resize's clamped edges; the conv's zero padding is fixed below.
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    y = tf.nn.depth_to_space(tf.nn.conv2d(padded, _phase_kernel(kernel), 1, "VALID"), 2)
    rows, columns = _ring(x, kernel)
    batch = tf.shape(x)[0]
    images = tf.tile(tf.range(batch), [2])  # the strips' images: top / left first, then bottom / right
    # Replace rows 0 and 2H-1, then columns 0 and 2W-1 (the corners, exact in both, twice), in
    # place where TensorFlow can forward the buffer, as it does here.
    row_index = tf.stack([images, tf.repeat([0, 2 * height - 1], batch)], axis=1)
    y = tf.tensor_scatter_nd_update(y, row_index, rows[:, 0])
    image_of, row_of = tf.meshgrid(images, tf.range(2 * height), indexing="ij")  # [2B, 2H]
    column_of = tf.broadcast_to(tf.repeat([0, 2 * width - 1], batch)[:, None], tf.shape(image_of))
    column_index = tf.reshape(tf.stack([image_of, row_of, column_of], axis=-1), [-1, 3])
    y = tf.tensor_scatter_nd_update(y, column_index, tf.reshape(columns, [-1, c_out]))
    return tf.nn.bias_add(y, bias)


def resize_conv(x, kernel, bias):
    """Bilinear x2 upsampling then a 3 x 3 'SAME' convolution plus bias: [B, H, W, C_in] ->
    [B, 2H, 2W, C_out], by phases where that is faster (PHASES_MIN_SIDE, convolution_forms_pay_off),
    else directly."""
    height, width = x.shape[1], x.shape[2]
    known = height is not None and width is not None
    if not (convolution_forms_pay_off() and known and min(height, width) >= PHASES_MIN_SIDE):
        return resize_conv_direct(x, kernel, bias)
    return resize_conv_by_phases(x, kernel, bias)


@tf.custom_gradient
def _matmul_kernel_order(h, kernel):
    def gradient(dy):
        # dh = dy @ kernel^T, computed as (kernel @ dy^T)^T: the kernel read row by row.
        return tf.transpose(tf.matmul(kernel, dy, transpose_b=True)), tf.matmul(h, dy, transpose_a=True)

    return tf.matmul(h, kernel), gradient


def matmul(h, kernel):
    """h @ kernel, h [N, D_in], kernel [D_in, D_out]: tf.matmul's product and gradients, the
    input's gradient computed in the kernel's stored order."""
    if _direct:
        return tf.matmul(h, kernel)
    return _matmul_kernel_order(h, kernel)


def pointwise_conv(x, kernel):
    """A 1 x 1, stride-1 convolution without bias: x [B, H, W, C_in], kernel [1, 1, C_in, C_out]
    -> [B, H, W, C_out], as `matmul` over the B H W pixels where that pays off."""
    if not convolution_forms_pay_off():
        return tf.nn.conv2d(x, kernel, 1, "VALID")
    c_in, c_out = kernel.shape[2], kernel.shape[3]
    pixels = matmul(tf.reshape(x, [-1, c_in]), tf.reshape(kernel, [c_in, c_out]))
    return tf.reshape(pixels, tf.concat([tf.shape(x)[:3], [c_out]], 0))
