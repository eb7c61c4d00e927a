"""Differentiable polyharmonic-spline image warp.

The paper renders a face by moving a texture from the mean landmarks to predicted landmarks with a
polyharmonic spline (kernel phi(r) = r) fitted to the landmark displacements, plus zero-displacement
points on the image border, and bilinear sampling. This module owns that operation for Keras 3
(tensorflow-addons, which had it as `tfa.image.sparse_image_warp`, cannot be imported any more).

It computes the reference's mathematics (see `interpolate_spline`) with three differences:

* Coordinates are (x, y) pixels: x to the right, y down, origin at the centre of the top-left pixel.
  `flow[..., 0]` is the x displacement. (The reference used (row, col).)
* It is more accurate in float32. The reference solved its linear system on raw pixel coordinates
  (entries from 1 to ~10^4 in one matrix) and formed distances as |x|^2 - 2 x.y + |y|^2, which
  cancels catastrophically. Here the points are centred and scaled to unit radius before the
  solve, with the kernel and regularization rescaled so the interpolant is *exactly* the same
  function (see `_fit_spline`), and distances are formed from coordinate differences.
* Degenerate control points do not produce NaN or garbage (see `_fit_spline`):
  - points closer than `duplicate_tolerance` are merged into one point whose value is the mean of
    theirs, so a duplicated landmark gives the same result as without the duplicate;
  - when the points do not determine the linear polynomial term (all collinear, fewer than
    D + 1 distinct points, or none at all), the undetermined part of that term is set to zero
    (the minimum-norm solution) instead of solving a singular system;
  - points outside the image are fine: the spline is defined everywhere and sampling clamps;
  - non-finite points or values raise `tf.errors.InvalidArgumentError` naming the argument
    (in eager and graph mode; under XLA `check_numerics` compiles to nothing, so NaN in means
    NaN out there).

Speed: for order 1 in float32 on the CPU, the spline's evaluation on a pixel grid and the bilinear
sampling run as fused C++ kernels (`normalized_faces.kernels`, compiled on first use), which never
form the [B, H, W, N] distance tensors the TF-ops composition needs; everything else, and every
case they do not cover (other orders, float64, XLA, `portable_ops()`, and any tracing by
`tf.saved_model.save`, so SavedModels load without this package), composes TF ops. Both paths
compute the same function and gradient (tests compare them).

For more speed, `sparse_image_warp(..., flow_stride=s)` evaluates the spline on a grid s times coarser
in each direction and upsamples the flow bilinearly; the exact path (`flow_stride=1`) is the
default. `benchmarks/warp_bench.py` prints the error this costs (README: "The warp").
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from normalized_faces.trace_switch import TraceSwitch

# The reference clamps squared distances here before sqrt/log, so phi and its gradient stay
# finite at r = 0. We keep the same clamp (in raw pixel units) so our values match it.
_SQUARED_DISTANCE_FLOOR = 1e-10

# Control points closer than this (as a fraction of the point cloud's radius) are one point. For
# a 224 px face that is ~1e-2 px in float32 and ~1e-5 px in float64: far below anything that
# could be meant as two landmarks, and above the distances at which the system stops being
# solvable in that precision.
_DUPLICATE_TOLERANCE = {tf.float32: 1e-4, tf.float64: 1e-7}

# Eigenvalues of B^T B below this fraction of the largest mean the points leave a direction of the
# linear term undetermined (e.g. all points collinear).
_RANK_TOLERANCE = {tf.float32: 1e-6, tf.float64: 1e-12}

_portable = TraceSwitch()


def portable_ops():
    """Within this context the warp composes TF ops only, never the fused kernels: for graphs that
    must run without this package (an exported SavedModel, TF Serving)."""
    return _portable.turned_on()


def _fused_kernels(*tensors):
    """The fused op library if it can compute on these tensors here, else None.

    It covers float32 on the CPU outside XLA (custom ops have no XLA lowering), outside
    `portable_ops()` and outside `tf.saved_model.save`'s tracing (a SavedModel must load without
    this package); the library loads (or compiles) on first use.
    """
    if _portable or _in_save_context() or any(t.dtype != tf.float32 for t in tensors):
        return None
    if tf.config.list_logical_devices("GPU") or _in_xla_context():
        return None
    from normalized_faces import kernels

    return kernels.fused_ops()


def _in_save_context() -> bool:
    from tensorflow.python.saved_model import save_context  # no public API tells a SavedModel trace

    return save_context.in_save_context()


def _in_xla_context() -> bool:
    if tf.executing_eagerly():
        return False
    from tensorflow.python.ops import control_flow_util  # no public API tells a jit_compile trace

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


class SplineFit(NamedTuple):
    """A fitted polyharmonic spline, in normalized coordinates.

    Attributes:
      centers: [B, N, D] control points, normalized: (points - offset) / scale.
      weights: [B, N, K] kernel weights (zero for merged duplicates).
      linear: [B, D + 1, K] coefficients of the linear term [x_1 .. x_D, 1] (normalized x).
      offset: [B, 1, D] the normalization's translation.
      scale: [B, 1, 1] the normalization's scale.
      order: the spline order (Python int).
    """

    centers: tf.Tensor
    weights: tf.Tensor
    linear: tf.Tensor
    offset: tf.Tensor
    scale: tf.Tensor
    order: int


def _check_order(order):
    if not isinstance(order, (int, np.integer)) or isinstance(order, bool) or order < 1:
        raise ValueError(f"order must be a positive integer (1: phi = r, 2: thin-plate, ...); got {order!r}")
    return int(order)


def _float_dtype(*tensors):
    """float64 if any input is float64, else float32 (half precision is promoted: the solve needs it)."""
    return tf.float64 if any(t.dtype == tf.float64 for t in tensors) else tf.float32


def _spline_dtype(result_dtype, order, compute_dtype):
    """The precision the spline is fitted and evaluated in.

    Order 1 is accurate in float32 once normalized (flow error ~1e-3 px). Orders >= 2 are not: their
    weights grow like (radius / spacing)^order and cancel when the spline is evaluated, so float32
    loses whole pixels (as the reference did) however the system is solved. They therefore default
    to float64 (2x the evaluation cost); pass compute_dtype=tf.float32 to trade that back, e.g. on
    TPUs, which have no float64.
    """
    if compute_dtype is not None:
        return tf.as_dtype(compute_dtype)
    return tf.float64 if (result_dtype == tf.float64 or order >= 2) else tf.float32


def _convert(x, name, dtype=None, rank=None):
    x = tf.convert_to_tensor(x, name=name)
    if not (x.dtype.is_floating or x.dtype.is_integer):
        raise TypeError(f"{name} must be a real tensor, got dtype {x.dtype.name}")
    if dtype is not None:
        x = tf.cast(x, dtype)
    if rank is not None and x.shape.rank is not None and x.shape.rank != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {x.shape}")
    return x


def _phi(squared_distance, order, log_scale, floor):
    """The kernel on squared distances in normalized units, rescaled to equal phi_raw / scale^order.

    Reference kernel on raw squared distances r2: sqrt(r2) (order 1), 0.5 r2^(k/2) log r2 (even k),
    r2^(k/2) (odd k). With r2 = scale^2 * r2n, odd orders scale by scale^k exactly; even orders add
    scale^k * log(scale) * r2n^(k/2), which we include so the fit is the same function even with
    regularization or order >= 4.

    Args:
      squared_distance: [...] normalized squared distances.
      order: Python int.
      log_scale: tensor broadcastable to squared_distance, log of the normalization scale.
      floor: tensor broadcastable, the reference's 1e-10 floor in normalized units.
    """
    r2 = tf.maximum(squared_distance, floor)
    if order == 1:
        return tf.sqrt(r2)
    if order % 2 == 1:
        return tf.pow(r2, 0.5 * order)
    power = tf.square(r2) if order == 4 else (r2 if order == 2 else tf.pow(r2, 0.5 * order))
    return power * (0.5 * tf.math.log(r2) + log_scale)


def _pairwise_squared_distance(a, b):
    """[B, M, D], [B, N, D] -> [B, M, N], from differences (no |a|^2 - 2ab + |b|^2 cancellation)."""
    return tf.reduce_sum(tf.square(a[:, :, None, :] - b[:, None, :, :]), axis=-1)


def fit_spline(train_points, train_values, order, regularization_weight=0.0, compute_dtype=None):
    """Fits a polyharmonic spline with a linear term through (train_points, train_values).

    Solves the reference's closed-form system
        [[A + reg I, P], [P^T, 0]] [w; v] = [f; 0],  A_ij = phi(|c_i - c_j|^2),  P = [c, 1]
    in normalized coordinates (see module docstring for degenerate input).

    Args:
      train_points: [B, N, D] float.
      train_values: [B, N, K] float.
      order: int >= 1.
      regularization_weight: float >= 0, in the reference's (raw coordinate) units.
      compute_dtype: precision of the fit (see `_spline_dtype`); None chooses.

    Returns:
      A `SplineFit` in compute_dtype, evaluated by `evaluate_spline` or `evaluate_spline_on_grid`.
    """
    order = _check_order(order)
    if regularization_weight < 0:
        raise ValueError(f"regularization_weight must be >= 0, got {regularization_weight}")
    result_dtype = _float_dtype(tf.convert_to_tensor(train_points), tf.convert_to_tensor(train_values))
    dtype = _spline_dtype(result_dtype, order, compute_dtype)
    points = _convert(train_points, "train_points", dtype, rank=3)
    values = _convert(train_values, "train_values", dtype, rank=3)
    points = tf.debugging.check_numerics(points, "train_points must be finite")
    values = tf.debugging.check_numerics(values, "train_values must be finite")
    dim = points.shape[-1]
    if dim is None:
        raise ValueError("train_points must have a static last dimension (D)")

    batch = tf.shape(points)[0]
    count = tf.shape(points)[1]

    # Normalization: centre on the mean, scale to unit max radius. The interpolant is invariant
    # to it (translation: the linear term absorbs it; scale: phi and reg are rescaled), so no
    # gradient needs to flow through offset and scale.
    stopped = tf.stop_gradient(points)
    offset = tf.reduce_sum(stopped, axis=1, keepdims=True) / tf.cast(tf.maximum(count, 1), dtype)
    # (max with 0: the max over no points at all is -inf.)
    radius = tf.sqrt(tf.maximum(tf.reduce_max(tf.reduce_sum(tf.square(stopped - offset), -1), axis=1), 0.0))
    scale = tf.where(radius > 0, radius, tf.ones_like(radius))[:, None, None]  # [B, 1, 1]
    centers = (points - offset) / scale
    log_scale = tf.math.log(scale)
    floor = _SQUARED_DISTANCE_FLOOR / tf.square(scale)
    reg = tf.cast(regularization_weight, dtype) / tf.pow(scale, float(order))

    squared_distance = _pairwise_squared_distance(centers, centers)  # [B, N, N]

    # Duplicates: a point within tolerance of an earlier one is dropped (its weight pinned to 0),
    # the earlier one takes the mean value of its group.
    tol = _DUPLICATE_TOLERANCE[dtype]
    near = tf.stop_gradient(squared_distance) < tol * tol
    earlier = tf.linalg.band_part(tf.ones([count, count], tf.bool), -1, 0) & ~tf.eye(count, dtype=tf.bool)
    keep = ~tf.reduce_any(near & earlier[None], axis=-1)  # [B, N]
    near_f = tf.cast(near, dtype)
    values = tf.matmul(near_f, values) / tf.reduce_sum(near_f, axis=-1, keepdims=True)
    keep_f = tf.cast(keep, dtype)

    kernel = _phi(squared_distance, order, log_scale, floor)
    kernel = kernel * keep_f[:, :, None] * keep_f[:, None, :]
    kernel += tf.linalg.diag(tf.where(keep, reg[:, :, 0], tf.ones_like(keep_f)))
    linear_basis = tf.concat([centers, tf.ones_like(centers[..., :1])], axis=-1) * keep_f[..., None]

    # Directions of the linear term the points leave undetermined get -I in the (otherwise zero)
    # lower-right block: that pins exactly those coefficients to zero and leaves the rest of the
    # solution unchanged (B^T w lies in range(B^T B), the pinned directions in its null space).
    gram = tf.stop_gradient(tf.matmul(linear_basis, linear_basis, transpose_a=True))
    eigenvalues, eigenvectors = tf.linalg.eigh(gram)
    threshold = _RANK_TOLERANCE[dtype] * tf.maximum(eigenvalues[:, -1:], 1.0)
    undetermined = tf.cast(eigenvalues < threshold, dtype)
    pin = tf.matmul(eigenvectors * undetermined[:, None, :], eigenvectors, transpose_b=True)

    lhs = tf.concat(
        [
            tf.concat([kernel, linear_basis], axis=2),
            tf.concat([tf.transpose(linear_basis, [0, 2, 1]), -pin], axis=2),
        ],
        axis=1,
    )
    rhs = tf.concat([values * keep_f[..., None], tf.zeros([batch, dim + 1, tf.shape(values)[2]], dtype)], axis=1)
    solution = tf.linalg.solve(lhs, rhs)
    return SplineFit(
        centers=centers,
        weights=solution[:, :count],
        linear=solution[:, count:],
        offset=offset,
        scale=scale,
        order=order,
    )


def evaluate_spline(fit: SplineFit, query_points):
    """Evaluates a fitted spline at arbitrary points.

    Args:
      fit: from `fit_spline`.
      query_points: [B, M, D].

    Returns:
      [B, M, K] values.
    """
    dtype = fit.centers.dtype
    query = _convert(query_points, "query_points", dtype, rank=3)
    query = (query - fit.offset) / fit.scale
    kernel = _phi(
        _pairwise_squared_distance(query, fit.centers),
        fit.order,
        tf.math.log(fit.scale),
        _SQUARED_DISTANCE_FLOOR / tf.square(fit.scale),
    )
    basis = tf.concat([query, tf.ones_like(query[..., :1])], axis=-1)
    return tf.matmul(kernel, fit.weights) + tf.matmul(basis, fit.linear)


def _grid_spline(fit: SplineFit, along_x, along_y, centres_x, centres_y, linear):
    """The spline at the grid points p = (along_x[w], along_y[h]): sum_n phi(|p - c_n|^2) w_n + linear . (p, 1).

    Args:
      fit: the spline (its order, scale and weights).
      along_x: [B, W], along_y: [B, H] normalized coordinates of the grid's columns and rows.
      centres_x, centres_y: [B, N] the centres' coordinates along the same two axes.
      linear: [B, 3, K] the linear term in those axes (rows: x, y, 1).

    Returns:
      [B, H, W, K]. r^2 = dx^2 + dy^2 separates: forming dx^2 [B, W, N] and dy^2 [B, H, N] once
      and adding them costs one add per grid point and centre instead of a [B, H*W, N, 2]
      difference tensor. For order 1 in float32 the fused kernel forms no [B, H, W, N] tensor.
    """
    floor = _SQUARED_DISTANCE_FLOOR / tf.square(fit.scale)  # [B, 1, 1]
    ops = _fused_kernels(along_x, fit.weights) if fit.order == 1 else None
    if ops is not None:
        return ops.nf_grid_spline(along_x, along_y, centres_x, centres_y, fit.weights, linear, floor[:, 0, 0])
    dx2 = tf.square(along_x[:, :, None] - centres_x[:, None, :])  # [B, W, N]
    dy2 = tf.square(along_y[:, :, None] - centres_y[:, None, :])  # [B, H, N]
    kernel = _phi(
        dy2[:, :, None, :] + dx2[:, None, :, :],
        fit.order,
        tf.math.log(fit.scale)[:, :, :, None],
        floor[:, :, :, None],
    )
    return (
        tf.einsum("bhwn,bnk->bhwk", kernel, fit.weights)
        + along_x[:, None, :, None] * linear[:, None, None, 0, :]
        + along_y[:, :, None, None] * linear[:, None, None, 1, :]
        + linear[:, None, None, 2, :]
    )


def evaluate_spline_on_grid(fit: SplineFit, xs, ys):
    """Evaluates a fitted 2-D spline on the grid xs x ys, using that r^2 = dx^2 + dy^2 separates
    (`_grid_kernel_sum`).

    Args:
      fit: from `fit_spline` on D = 2 points (x, y).
      xs: [W] x coordinates (pixels).
      ys: [H] y coordinates (pixels).

    Returns:
      [B, H, W, K] values.
    """
    dtype = fit.centers.dtype
    offset = fit.offset[:, 0, :]  # [B, 2]
    scale = fit.scale[:, 0, :]  # [B, 1]
    xs_n = (tf.cast(xs, dtype)[None, :] - offset[:, :1]) / scale  # [B, W]
    ys_n = (tf.cast(ys, dtype)[None, :] - offset[:, 1:]) / scale  # [B, H]
    return _grid_spline(fit, xs_n, ys_n, fit.centers[..., 0], fit.centers[..., 1], fit.linear)


def evaluate_spline_on_affine_grid(fit: SplineFit, chip_to_frame, us, vs):
    """Evaluates a fitted 2-D spline at the points M @ [u, v, 1] for u in us, v in vs.

    M's two columns must be orthogonal (a rotation with per-axis scales, as a face chip's framing
    is). Then, in the frame of those axes, r^2 = du^2 + dv^2 separates as on a pixel grid
    (`evaluate_spline_on_grid`): [B, U, N] and [B, V, N] differences instead of [B, V, U, N, 2].

    Args:
      fit: from `fit_spline` on D = 2 points (x, y).
      chip_to_frame: [2, 3] NumPy matrix with orthogonal columns.
      us: [U], vs: [V] chip coordinates.

    Returns:
      [B, V, U, K] values.
    """
    matrix = np.asarray(chip_to_frame, np.float64)
    axis_u, axis_v, origin = matrix[:, 0], matrix[:, 1], matrix[:, 2]
    length_u, length_v = np.linalg.norm(axis_u), np.linalg.norm(axis_v)
    if abs(axis_u @ axis_v) > 1e-9 * length_u * length_v:
        raise ValueError(f"chip_to_frame's columns must be orthogonal, got {matrix.tolist()}")
    dtype = fit.centers.dtype
    unit_u = tf.constant(axis_u / length_u, dtype)
    unit_v = tf.constant(axis_v / length_v, dtype)
    offset = fit.offset[:, 0, :]  # [B, 2]
    scale = fit.scale[:, 0, :]  # [B, 1]
    origin_n = (tf.constant(origin, dtype)[None] - offset) / scale  # [B, 2] normalized chip origin
    us = tf.cast(us, dtype)
    vs = tf.cast(vs, dtype)
    # Coordinates along the two axes, normalized: of the chip points and of the centres.
    along_u = tf.reduce_sum(origin_n * unit_u, -1, keepdims=True) + us[None] * length_u / scale  # [B, U]
    along_v = tf.reduce_sum(origin_n * unit_v, -1, keepdims=True) + vs[None] * length_v / scale  # [B, V]
    centres_u = tf.reduce_sum(fit.centers * unit_u, -1)  # [B, N]
    centres_v = tf.reduce_sum(fit.centers * unit_v, -1)
    # In normalized coordinates a chip point is p = along_u unit_u + along_v unit_v (the units are
    # orthonormal), so the linear term x L0 + y L1 + L2 is along_u (unit_u . L) + along_v (unit_v . L) + L2.
    linear = fit.linear  # rows: x, y, 1
    linear_uv = tf.stack(
        [
            unit_u[0] * linear[:, 0, :] + unit_u[1] * linear[:, 1, :],
            unit_v[0] * linear[:, 0, :] + unit_v[1] * linear[:, 1, :],
            linear[:, 2, :],
        ],
        axis=1,
    )
    return _grid_spline(fit, along_u, along_v, centres_u, centres_v, linear_uv)  # [B, V, U, K]


def interpolate_spline(train_points, train_values, query_points, order, regularization_weight=0.0, compute_dtype=None):
    """Polyharmonic spline interpolation (drop-in for `tfa.image.interpolate_spline`).

    f(x) = sum_i w_i phi(|x - c_i|) + v^T [x, 1], with phi(r) = r^k (odd k) or r^k log r (even k),
    fitted in closed form so that f(c_i) = f_i (regularization_weight = 0) or to the smoothed
    least-squares problem (> 0). Differentiable with respect to all three tensors.

    Args:
      train_points: [B, N, D] float control points.
      train_values: [B, N, K] float values at them.
      query_points: [B, M, D] float points to evaluate at.
      order: int >= 1. 1: phi = r (the paper's choice: least overshoot); 2: thin-plate spline.
        Orders >= 4 are not conditionally positive definite with a linear term and may be singular.
      regularization_weight: float >= 0, same units as the reference.
      compute_dtype: internal precision; None: float32 for order 1, float64 for higher orders or
        float64 inputs (see `_spline_dtype`).

    Returns:
      [B, M, K] interpolated values, in float64 if any input is float64, else float32.
    """
    result_dtype = _float_dtype(
        tf.convert_to_tensor(train_points), tf.convert_to_tensor(train_values), tf.convert_to_tensor(query_points)
    )
    fit = fit_spline(train_points, train_values, order, regularization_weight, compute_dtype)
    return tf.cast(evaluate_spline(fit, query_points), result_dtype)


def _pixel_grid_coordinates(size, dtype):
    return tf.cast(tf.range(size), dtype)


def bilinear_sample(image, x, y):
    """Samples `image` bilinearly at (x, y), clamping to the border like the reference.

    Args:
      image: [B, H, W, C].
      x: [B, ...] x coordinates (pixels); y: same shape, y coordinates.

    Returns:
      [B, ..., C] samples, in image's dtype.

    In float32 on the CPU the fused kernel samples (and scatters the image gradient) in one pass.
    Otherwise the image gradient is a scatter-add; the custom gradient below does it as one
    `unsorted_segment_sum` instead of four `IndexedSlices` conversions (2x faster backward).
    """
    if _fused_kernels(image, x, y) is not None:
        # The fused kernel samples at base - flow: base 0, flow -(x, y).
        points = -tf.stack([tf.reshape(x, [tf.shape(x)[0], -1]), tf.reshape(y, [tf.shape(y)[0], -1])], axis=-1)
        samples = _sample_at(image, tf.zeros_like(points[0]), points)
        return tf.reshape(samples, tf.concat([tf.shape(x), tf.shape(image)[3:]], axis=0))
    return _bilinear_sample_ops(image, x, y)


def _bilinear_sample_ops(image, x, y):
    """`bilinear_sample` composed of TF ops."""
    shape = tf.shape(image)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    coord_dtype = x.dtype

    def floor_and_fraction(q, size):
        # Floor clamped to [0, size - 2] and fraction to [0, 1]: samples outside the image take
        # the border value and pass no gradient to q, exactly as the reference.
        q0 = tf.clip_by_value(tf.floor(q), 0.0, tf.cast(tf.maximum(size - 2, 0), coord_dtype))
        return tf.cast(q0, tf.int32), tf.cast(tf.clip_by_value(q - q0, 0.0, 1.0), image.dtype)

    x0, ax = floor_and_fraction(x, width)
    y0, ay = floor_and_fraction(y, height)
    x1 = tf.minimum(x0 + 1, width - 1)
    y1 = tf.minimum(y0 + 1, height - 1)
    rank = x.shape.rank
    batch_offset = tf.reshape(tf.range(batch) * height * width, [-1] + [1] * (rank - 1))
    row0 = batch_offset + y0 * width
    row1 = batch_offset + y1 * width
    indices = tf.stack([row0 + x0, row0 + x1, row1 + x0, row1 + x1], axis=-1)  # [B, ..., 4]
    weights = tf.stack([(1 - ax) * (1 - ay), ax * (1 - ay), (1 - ax) * ay, ax * ay], axis=-1)

    @tf.custom_gradient
    def gather_corners(image):
        flat = tf.reshape(image, [-1, channels])
        corners = tf.gather(flat, indices)  # [B, ..., 4, C]

        def grad(upstream):
            summed = tf.math.unsorted_segment_sum(
                tf.reshape(upstream, [-1, channels]), tf.reshape(indices, [-1]), batch * height * width
            )
            return tf.reshape(summed, shape)

        return corners, grad

    return tf.reduce_sum(gather_corners(image) * weights[..., None], axis=-2)


def _sample_at(image, base, flow):
    """Samples `image` bilinearly at base - flow (as `bilinear_sample`).

    Args:
      image: [B, H, W, C]; base: [Q, 2] (x, y) points (constants: no gradient);
      flow: [B, Q, 2] (x, y) displacements.

    Returns:
      [B, Q, C].
    """
    ops = _fused_kernels(image, base, flow)
    if ops is not None:
        return ops.nf_warp_sample(image, base, flow)
    return _bilinear_sample_ops(image, base[None, :, 0] - flow[..., 0], base[None, :, 1] - flow[..., 1])


def dense_image_warp(image, flow):
    """Warps an image by a dense flow: out[b, y, x] = image[b, y - flow_y, x - flow_x] (bilinear).

    Drop-in for `tfa.image.dense_image_warp` except that flow[..., 0] is the x (column)
    displacement and flow[..., 1] the y (row) displacement. Samples outside the image take the
    nearest border value.

    Args:
      image: [B, H, W, C] float.
      flow: [B, H, W, 2] float, (x, y) pixel displacements.

    Returns:
      [B, H, W, C] in image's dtype.
    """
    image = _convert(image, "image", rank=4)
    if not image.dtype.is_floating:
        image = tf.cast(image, tf.float32)
    flow = _convert(flow, "flow", rank=4)
    if not flow.dtype.is_floating:
        flow = tf.cast(flow, tf.float32)
    if flow.shape[-1] is not None and flow.shape[-1] != 2:
        raise ValueError(f"flow must be [B, H, W, 2] (x, y) displacements, got shape {flow.shape}")
    shape = tf.shape(image)
    ys, xs = tf.meshgrid(
        _pixel_grid_coordinates(shape[1], flow.dtype), _pixel_grid_coordinates(shape[2], flow.dtype), indexing="ij"
    )
    base = tf.reshape(tf.stack([xs, ys], axis=-1), [-1, 2])  # [H * W, 2] (x, y) of every pixel
    samples = _sample_at(image, base, tf.reshape(flow, [shape[0], -1, 2]))
    return tf.reshape(samples, shape)


def border_points(height, width, num_boundary_points, dtype=tf.float32):
    """Zero-flow points on the image border, laid out as the reference does.

    `num_boundary_points = n > 0` places points where the grid linspace(0, H-1, n+1) x
    linspace(0, W-1, n+1) meets the border: 4n points (n = 1: the corners; n = 2: corners and edge
    midpoints), in row-major order of that grid (top row, then left/right pairs, then bottom row).

    Args:
      height, width: ints or scalar int tensors.
      num_boundary_points: Python int >= 0.

    Returns:
      [4n, 2] (x, y) points.
    """
    n = int(num_boundary_points)
    if n < 0:
        raise ValueError(f"num_boundary_points must be >= 0, got {num_boundary_points}")
    if n == 0:
        return tf.zeros([0, 2], dtype)
    steps = np.arange(n + 1) / n  # fractions along an edge
    unit = [(tx, 0.0) for tx in steps]
    unit += [pair for ty in steps[1:-1] for pair in ((0.0, ty), (1.0, ty))]
    unit += [(tx, 1.0) for tx in steps]
    unit = tf.constant(np.array(unit), dtype)
    extent = tf.cast(tf.stack([width - 1, height - 1]), dtype)
    return unit * extent


def _flow_grid(size, stride, dtype):
    """Coarse sample positions linspace(0, size-1, n) and the [size, n] matrix upsampling from them."""
    n = (size - 1 + stride - 1) // stride + 1  # ceil((size - 1) / stride) + 1
    positions = tf.cast(tf.linspace(tf.constant(0.0, tf.float64), tf.cast(size - 1, tf.float64), n), dtype)
    # Pixel p sits at fractional coarse index p (n - 1) / (size - 1).
    u = tf.cast(tf.range(size), tf.float64) * tf.cast(n - 1, tf.float64) / tf.cast(tf.maximum(size - 1, 1), tf.float64)
    i0 = tf.minimum(tf.cast(tf.floor(u), tf.int32), tf.maximum(n - 2, 0))
    i1 = tf.minimum(i0 + 1, n - 1)
    frac = tf.cast(u - tf.cast(i0, tf.float64), dtype)[:, None]
    upsample = tf.one_hot(i0, n, dtype=dtype) * (1 - frac) + tf.one_hot(i1, n, dtype=dtype) * frac
    return positions, upsample


def _upsample_flow(coarse, upsample_y, upsample_x):
    """The coarse flow [B, n_y, n_x, K] on the full grid: [B, H, W, K] = upsample_y @ coarse @ upsample_x^T.

    upsample_y [H, n_y] and upsample_x [W, n_x] are _flow_grid's: grid node i sits at pixel
    i (size - 1) / (n - 1), which is ResizeBilinear's align_corners mapping, so in float32 that
    kernel does it (2-3x faster forward + backward than the matrix products, here; the same values
    to float32 rounding of the fractional positions, ~1e-6 relative). Other dtypes: the matrices,
    because ResizeBilinear answers float32.
    """
    if coarse.dtype == tf.float32:
        size = tf.stack([tf.shape(upsample_y)[0], tf.shape(upsample_x)[0]])
        return tf.raw_ops.ResizeBilinear(images=coarse, size=size, align_corners=True, half_pixel_centers=False)
    return tf.einsum("hi,bijk,wj->bhwk", upsample_y, coarse, upsample_x)


def _check_stride(flow_stride) -> int:
    flow_stride = int(flow_stride)
    if flow_stride < 1:
        raise ValueError(f"flow_stride must be >= 1, got {flow_stride}")
    return flow_stride


def _check_same_size(axis: int, what: str, **tensors):
    """Raises ValueError naming the tensors and their shapes when their sizes on `axis` differ (a
    mismatch would otherwise surface as a raw shape error inside the spline solve). Sizes unknown
    until run time (None) are left to the ops."""
    known = {name: t.shape for name, t in tensors.items() if t.shape.rank is not None and t.shape[axis] is not None}
    if len({shape[axis] for shape in known.values()}) > 1:
        raise ValueError(
            f"{' and '.join(f'{name} {list(shape)}' for name, shape in known.items())} must have the same {what}"
        )


def _fit_warp(image, source_points, dest_points, order, regularization_weight, num_boundary_points, compute_dtype):
    """The spline of a sparse warp: flow dest - source fitted at dest, plus zero flow at the border.

    Returns (image as a float tensor, SplineFit, result dtype, spline dtype).
    """
    image = _convert(image, "image", rank=4)
    if not image.dtype.is_floating:
        image = tf.cast(image, tf.float32)
    result_dtype = _float_dtype(image, tf.convert_to_tensor(source_points), tf.convert_to_tensor(dest_points))
    dtype = _spline_dtype(result_dtype, order, compute_dtype)
    source = _convert(source_points, "source_points", dtype, rank=3)
    dest = _convert(dest_points, "dest_points", dtype, rank=3)
    for name, points in (("source_points", source), ("dest_points", dest)):
        if points.shape[-1] is not None and points.shape[-1] != 2:
            raise ValueError(f"{name} must be [B, N, 2] (x, y) points, got shape {points.shape}")
    _check_same_size(1, "number of points", source_points=source, dest_points=dest)
    _check_same_size(0, "batch size", image=image, source_points=source, dest_points=dest)
    shape = tf.shape(image)
    batch, height, width = shape[0], shape[1], shape[2]
    flows = dest - source
    border = border_points(height, width, num_boundary_points, dtype)
    tiled_border = tf.tile(border[None], [batch, 1, 1])
    control = tf.concat([dest, tiled_border], axis=1)
    control_flows = tf.concat([flows, tf.zeros_like(tiled_border)], axis=1)
    fit = fit_spline(control, control_flows, order, regularization_weight, dtype)
    return image, fit, result_dtype, dtype


def sparse_image_warp(
    image,
    source_points,
    dest_points,
    order=1,
    regularization_weight=0.0,
    num_boundary_points=4,
    flow_stride=1,
    compute_dtype=None,
):
    """Warps `image` so that the content at `source_points` moves to `dest_points`.

    As `tfa.image.sparse_image_warp`: a spline is fitted at the destination points to the flow
    dest - source (plus zero flow at `border_points`, appended after the caller's points),
    evaluated at every pixel, and the image is sampled at pixel - flow.

    Args:
      image: [B, H, W, C] float.
      source_points: [B, N, 2] (x, y) points in `image`.
      dest_points: [B, N, 2] where they should land.
      order: spline order (1: phi = r, the paper's choice).
      regularization_weight: >= 0; 0 interpolates the points exactly.
      num_boundary_points: n >= 0 pins 4n border points (see `border_points`). The default 4
        (16 points) keeps the border still, as the paper does; 0 lets the whole image move.
      flow_stride: 1 evaluates the spline at every pixel (exact). s > 1 evaluates it on a grid s
        times coarser and upsamples the flow bilinearly: much faster, with a flow error of a small
        fraction of a pixel for face-like warps (benchmarks/warp_bench.py measures it).
      compute_dtype: precision of the spline; None: float32 for order 1, float64 for higher
        orders or float64 inputs (see `_spline_dtype`). Sampling is in the image's dtype.

    Returns:
      (warped [B, H, W, C] in image's dtype, flow [B, H, W, 2] (x, y) displacements, float64 if
      any input is float64, else float32).
    """
    image, fit, result_dtype, dtype = _fit_warp(
        image, source_points, dest_points, order, regularization_weight, num_boundary_points, compute_dtype
    )
    flow_stride = _check_stride(flow_stride)
    shape = tf.shape(image)
    height, width = shape[1], shape[2]

    if flow_stride == 1:
        flow = evaluate_spline_on_grid(
            fit, _pixel_grid_coordinates(width, dtype), _pixel_grid_coordinates(height, dtype)
        )
    else:
        xs, upsample_x = _flow_grid(width, flow_stride, dtype)
        ys, upsample_y = _flow_grid(height, flow_stride, dtype)
        flow = _upsample_flow(evaluate_spline_on_grid(fit, xs, ys), upsample_y, upsample_x)

    flow = tf.cast(flow, result_dtype)
    return dense_image_warp(image, flow), flow


def sparse_image_warp_chip(
    image,
    source_points,
    dest_points,
    chip_to_image,
    chip_size,
    order=1,
    regularization_weight=0.0,
    num_boundary_points=4,
    flow_stride=1,
    compute_dtype=None,
):
    """A chip of the warped image, sampled straight from `image`: the warp and a crop in one resampling.

    What `sparse_image_warp` renders at pixel p is image(p - flow(p)), defined for any point p of
    the frame. This evaluates it at the chip's points p = chip_to_image @ [u, v, 1] (u, v = 0 ..
    chip_size - 1) instead of at every pixel: the flow at chip_size^2 points and one bilinear
    sampling, where rendering the whole frame and then cutting the chip out of it costs a full
    frame's flow, a full frame's sampling and a second sampling (which also blurs the chip twice).
    With chip_to_image = identity and chip_size = H = W it returns sparse_image_warp's image.

    Args:
      image, source_points, dest_points, order, regularization_weight, num_boundary_points,
        compute_dtype: as `sparse_image_warp` (the border points are the frame's).
      chip_to_image: [2, 3] affine matrix, chip (u, v) -> frame (x, y) (a Python/NumPy constant) whose
        columns are orthogonal (a rotation with per-axis scales; every face chip framing here).
      chip_size: int, the chip is chip_size x chip_size.
      flow_stride: 1 evaluates the flow at every chip pixel; s > 1 on every s-th (in chip index
        space) and upsamples it bilinearly, as `sparse_image_warp` does on the frame.

    Returns:
      [B, chip_size, chip_size, C] in image's dtype.
    """
    image, fit, result_dtype, dtype = _fit_warp(
        image, source_points, dest_points, order, regularization_weight, num_boundary_points, compute_dtype
    )
    flow_stride = _check_stride(flow_stride)
    chip_size = int(chip_size)
    matrix = tf.constant(np.asarray(chip_to_image, np.float64), dtype)  # [2, 3]

    def frame_points(us, vs):
        # [len(vs), len(us), 2] frame (x, y) of chip indices (u, v).
        v, u = tf.meshgrid(vs, us, indexing="ij")
        return tf.einsum("ij,hwj->hwi", matrix, tf.stack([u, v, tf.ones_like(u)], axis=-1))

    indices = tf.cast(tf.range(chip_size), dtype)
    points = frame_points(indices, indices)
    if flow_stride == 1:
        flow = evaluate_spline_on_affine_grid(fit, chip_to_image, indices, indices)
    else:
        positions, upsample = _flow_grid(chip_size, flow_stride, dtype)
        coarse = evaluate_spline_on_affine_grid(fit, chip_to_image, positions, positions)
        flow = _upsample_flow(coarse, upsample, upsample)
    flow = tf.cast(flow, result_dtype)
    points = tf.reshape(tf.cast(points, flow.dtype), [-1, 2])
    samples = _sample_at(image, points, tf.reshape(flow, [tf.shape(flow)[0], -1, 2]))
    return tf.reshape(samples, [tf.shape(image)[0], chip_size, chip_size, tf.shape(image)[3]])


@keras.saving.register_keras_serializable(package="normalized_faces")
class SparseImageWarp(keras.layers.Layer):
    """Keras layer: `sparse_image_warp(image, source_points, dest_points)`.

    Call: `layer(image [B, H, W, C], source_points [B, N, 2], dest_points [B, N, 2])` returns the
    warped image (and, with `return_flow=True`, also the [B, H, W, 2] flow). Samples in float32
    (float64 if the image is), whatever the mixed-precision policy; the spline's precision is
    `spline_dtype` (None: see `sparse_image_warp`'s compute_dtype). The arguments are those of
    `sparse_image_warp`.
    """

    def __init__(
        self,
        order=1,
        regularization_weight=0.0,
        num_boundary_points=4,
        flow_stride=1,
        return_flow=False,
        spline_dtype=None,
        **kwargs,
    ):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.spline_dtype = None if spline_dtype is None else tf.as_dtype(spline_dtype).name
        self.order = _check_order(order)
        self.regularization_weight = float(regularization_weight)
        self.num_boundary_points = int(num_boundary_points)
        self.flow_stride = int(flow_stride)
        self.return_flow = bool(return_flow)

    def call(self, image, source_points, dest_points):
        compute = tf.float64 if image.dtype == tf.float64 else tf.float32
        warped, flow = sparse_image_warp(
            tf.cast(image, compute),
            source_points,
            dest_points,
            order=self.order,
            regularization_weight=self.regularization_weight,
            num_boundary_points=self.num_boundary_points,
            flow_stride=self.flow_stride,
            compute_dtype=self.spline_dtype,
        )
        return (warped, flow) if self.return_flow else warped

    def compute_output_shape(self, image_shape, source_points_shape=None, dest_points_shape=None):
        image_shape = tuple(image_shape)
        if self.return_flow:
            return image_shape, image_shape[:3] + (2,)
        return image_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            order=self.order,
            regularization_weight=self.regularization_weight,
            num_boundary_points=self.num_boundary_points,
            flow_stride=self.flow_stride,
            return_flow=self.return_flow,
            spline_dtype=self.spline_dtype,
        )
        return config


__all__ = [
    "SparseImageWarp",
    "SplineFit",
    "bilinear_sample",
    "border_points",
    "dense_image_warp",
    "evaluate_spline",
    "evaluate_spline_on_affine_grid",
    "evaluate_spline_on_grid",
    "fit_spline",
    "interpolate_spline",
    "sparse_image_warp",
    "sparse_image_warp_chip",
]
