"""The spline warp against independent references: the tfa oracles, scipy, float64, finite differences."""

import json

import cv2
import numpy as np
import pytest
import scipy.interpolate
import tensorflow as tf
from conftest import shared_path

from normalized_faces import landmarks, warp


def _oracle():
    return json.loads(shared_path("oracles", "tfa_spline", "spline_regression.json").read_text())


def _load_rgb(path):
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # RGBA; keep RGB as the reference did
    return cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2RGB)


def smooth_image(rng, batch, height=224, width=224, channels=3, sigma=2.0):
    """Random images with structure at every scale but no aliasing: blurred noise in [0, 1]."""
    noise = rng.uniform(size=[batch, height, width, channels])
    return np.stack([cv2.GaussianBlur(image, (0, 0), sigma).reshape(height, width, channels) for image in noise])


def face_warp_problem(rng, batch):
    """A face-like warp: one random face's landmarks moved onto another's."""
    source = landmarks.random_face_landmarks(rng, batch)
    dest = landmarks.random_face_landmarks(rng, batch)
    return smooth_image(rng, batch), source, dest


def reference_style_spline(points, values, query, order):
    """The reference's algorithm as its README describes it, in the precision it used (float32):
    raw pixel coordinates, distances as |a|^2 - 2ab + |b|^2, one LU solve. The baseline our float32
    path must not be worse than."""
    points, values, query = (tf.constant(x, tf.float32) for x in (points, values, query))

    def squared_distance(a, b):
        return (
            tf.reduce_sum(a * a, 2)[:, :, None]
            - 2 * tf.matmul(a, b, transpose_b=True)
            + tf.reduce_sum(b * b, 2)[:, None, :]
        )

    def phi(r2):
        r2 = tf.maximum(r2, 1e-10)
        if order == 1:
            return tf.sqrt(r2)
        if order % 2 == 0:
            return 0.5 * tf.pow(r2, 0.5 * order) * tf.math.log(r2)
        return tf.pow(r2, 0.5 * order)

    batch, count = points.shape[0], points.shape[1]
    basis = tf.concat([points, tf.ones_like(points[..., :1])], 2)
    lhs = tf.concat(
        [
            tf.concat([phi(squared_distance(points, points)), basis], 2),
            tf.concat([tf.transpose(basis, [0, 2, 1]), tf.zeros([batch, 3, 3])], 2),
        ],
        1,
    )
    rhs = tf.concat([values, tf.zeros([batch, 3, values.shape[2]])], 1)
    solution = tf.linalg.solve(lhs, rhs)
    query_basis = tf.concat([query, tf.ones_like(query[..., :1])], 2)
    return tf.matmul(phi(squared_distance(query, points)), solution[:, :count]) + tf.matmul(
        query_basis, solution[:, count:]
    )


# --- Oracles from the reference's own test suite ------------------------------------------------


def _regression_cases():
    # Parametrize lazily: the oracle may be absent (then each case skips, saying why).
    return [(problem, order, reg) for problem in ("1d", "3d") for order in (1, 2, 3, 4) for reg in (0.0, 0.01)]


@pytest.mark.parametrize("problem,order,reg", _regression_cases())
def test_interpolate_spline_matches_reference_regression_values(problem, order, reg):
    data = _oracle()["problems"][problem]
    expected = next(
        e["values"] for e in data["expected_query_values"] if e["order"] == order and e["regularization_weight"] == reg
    )
    out = warp.interpolate_spline(
        np.array(data["train_points"]), np.array(data["train_values"]), np.array(data["query_points"]), order, reg
    )
    assert out.dtype == tf.float64
    # The oracle holds ~12 significant digits from a float64 LU solve: 1e-6 relative is the
    # README's bound, with an absolute floor for values near zero (order 4, reg 0.01: -0.025).
    expected = np.array(expected)
    np.testing.assert_allclose(out.numpy().ravel(), expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("num_boundary_points", [0, 1, 4])
def test_sparse_image_warp_matches_reference_smiley_images(order, num_boundary_points):
    data = _oracle()["smiley"]
    folder = shared_path("oracles", "tfa_spline")
    image = _load_rgb(folder / data["input"]).astype(np.float32) / 255.0
    expected = _load_rgb(folder / data["expected"].format(order=order, num_boundary_points=num_boundary_points))
    source = np.array(data["control_points_xy"], np.float32)
    dest = source + np.array(data["displacements_xy"], np.float32)
    warped, flow = warp.sparse_image_warp(
        image[None], source[None], dest[None], order=order, num_boundary_points=num_boundary_points
    )
    ours = (warped[0].numpy() * 255).astype(np.uint8)
    # The reference compared uint8(out * 255) with atol 2.
    np.testing.assert_allclose(ours.astype(int), expected.astype(int), atol=2, rtol=0)
    # The flow interpolates the displacements at the destination points (they are pixel-exact
    # queries only where the points are integer, which these are).
    at_dest = flow[0].numpy()[dest[:, 1].astype(int), dest[:, 0].astype(int)]
    integral = np.all(dest == np.round(dest), axis=1)
    np.testing.assert_allclose(at_dest[integral], (dest - source)[integral], atol=1e-3)


# --- scipy's independent implementation ---------------------------------------------------------


@pytest.mark.parametrize(
    "order,kernel,smoothing",
    [
        (1, "linear", 0.0),
        (2, "thin_plate_spline", 0.0),
        (2, "thin_plate_spline", 0.5),
        (3, "cubic", 0.0),
        (3, "cubic", 0.3),
    ],
)
def test_interpolate_spline_matches_scipy_rbf(rng, order, kernel, smoothing):
    # scipy: kernel matrix + smoothing * I with a degree-1 polynomial: our system with reg =
    # smoothing. Two conventions differ: scipy's 'linear' kernel is -r (so its smoothing enters
    # with the opposite sign), and the reference (hence we) floors r^2 at 1e-10, which puts
    # phi(0) = 1e-5 on the diagonal for order 1: a smoothing of 1e-5, i.e. -1e-5 in scipy's terms.
    scipy_smoothing = -1e-5 if kernel == "linear" else smoothing
    for _ in range(3):
        points = rng.uniform(0, 224, size=[40, 2])
        values = rng.normal(size=[40, 3]) * 10
        query = rng.uniform(-20, 244, size=[200, 2])
        expected = scipy.interpolate.RBFInterpolator(
            points, values, kernel=kernel, degree=1, smoothing=scipy_smoothing
        )(query)
        ours = warp.interpolate_spline(points[None], values[None], query[None], order, smoothing)[0].numpy()
        np.testing.assert_allclose(ours, expected, rtol=1e-7, atol=1e-7 * np.abs(expected).max())


# --- float32 accuracy against a float64 solution -------------------------------------------------


def test_float32_order1_warp_is_within_1e_3_of_float64(rng):
    image, source, dest = face_warp_problem(rng, batch=8)
    exact, exact_flow = warp.sparse_image_warp(image, source, dest)
    ours, ours_flow = warp.sparse_image_warp(*(x.astype(np.float32) for x in (image, source, dest)))
    assert ours.dtype == tf.float32
    image_error = np.abs(ours.numpy() - exact.numpy()).max()
    flow_error = np.abs(ours_flow.numpy() - exact_flow.numpy()).max()
    print(f"order 1 float32 vs float64: image {image_error:.2e}, flow {flow_error:.2e} px")
    assert image_error <= 1e-3
    assert flow_error <= 1e-2


@pytest.mark.parametrize("order", [1, 2, 3])
def test_float32_spline_is_no_worse_than_the_reference_algorithm(rng, order):
    _, source, dest = face_warp_problem(rng, batch=4)
    control = np.concatenate([dest, np.tile(warp.border_points(224, 224, 4, tf.float64).numpy()[None], [4, 1, 1])], 1)
    values = np.concatenate([dest - source, np.zeros([4, 16, 2])], 1)
    ys, xs = np.mgrid[0:224:3, 0:224:3]
    query = np.tile(np.stack([xs, ys], -1).reshape(1, -1, 2).astype(np.float64), [4, 1, 1])
    exact = warp.interpolate_spline(control, values, query, order).numpy()
    ours = warp.interpolate_spline(*(x.astype(np.float32) for x in (control, values, query)), order).numpy()
    reference = reference_style_spline(control, values, query, order).numpy()
    ours_error, reference_error = np.abs(ours - exact).max(), np.abs(reference - exact).max()
    print(f"order {order} float32 flow error vs float64: ours {ours_error:.2e} px, reference {reference_error:.2e} px")
    assert ours_error <= reference_error
    assert ours_error < 1e-2


def test_float64_warp_matches_direct_float64_evaluation(rng):
    # The grid evaluation (separable distances) against the generic point evaluation, both float64.
    image, source, dest = face_warp_problem(rng, batch=2)
    _, flow = warp.sparse_image_warp(image[:, :40, :50], source, dest, num_boundary_points=2)
    control = np.concatenate([dest, np.tile(warp.border_points(40, 50, 2, tf.float64).numpy()[None], [2, 1, 1])], 1)
    values = np.concatenate([dest - source, np.zeros([2, 8, 2])], 1)
    ys, xs = np.mgrid[0:40, 0:50]
    query = np.tile(np.stack([xs, ys], -1).reshape(1, -1, 2).astype(np.float64), [2, 1, 1])
    direct = warp.interpolate_spline(control, values, query, 1).numpy().reshape(2, 40, 50, 2)
    np.testing.assert_allclose(flow.numpy(), direct, atol=1e-9)


# --- Behaviour -----------------------------------------------------------------------------------


def test_zero_displacement_returns_the_image(rng):
    image, source, _ = face_warp_problem(rng, batch=2)
    warped, flow = warp.sparse_image_warp(image.astype(np.float32), source, source)
    assert np.abs(flow.numpy()).max() < 1e-4
    np.testing.assert_allclose(warped.numpy(), image, atol=1e-5)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_pure_translation_without_boundary_points_translates(rng, order):
    image = smooth_image(rng, 1, 60, 70)
    source = rng.uniform(10, 50, size=[1, 12, 2])
    shift = np.array([3.0, -2.0])  # (x, y): content moves 3 px right and 2 px up
    warped, flow = warp.sparse_image_warp(image, source, source + shift, order=order, num_boundary_points=0)
    np.testing.assert_allclose(flow.numpy(), np.broadcast_to(shift, flow.shape), atol=1e-9)
    # out[y, x] = image[y + 2, x - 3] wherever that is inside the image.
    np.testing.assert_allclose(warped.numpy()[0, 0:58, 3:70], image[0, 2:60, 0:67], atol=1e-9)


def test_dense_image_warp_samples_at_pixel_minus_flow_and_clamps():
    image = np.arange(4 * 5, dtype=np.float64).reshape(1, 4, 5, 1)  # value = 5 y + x
    flow = np.zeros([1, 4, 5, 2])
    flow[0, 1, 2] = [0.5, -0.25]  # samples (x, y) = (1.5, 1.25)
    flow[0, 3, 4] = [-10, -10]  # samples far outside: clamps to the bottom-right pixel
    flow[0, 0, 0] = [0.0, 2.0]  # samples y = -2: clamps to row 0
    out = warp.dense_image_warp(image, flow).numpy()[0, :, :, 0]
    assert out[1, 2] == pytest.approx(5 * 1.25 + 1.5)
    assert out[3, 4] == pytest.approx(19.0)
    assert out[0, 0] == pytest.approx(0.0)
    assert out[2, 3] == pytest.approx(13.0)


def test_border_points_layout():
    corners = warp.border_points(180, 200, 1, tf.float64).numpy()
    np.testing.assert_array_equal(corners, [[0, 0], [199, 0], [0, 179], [199, 179]])
    eight = warp.border_points(11, 21, 2, tf.float64).numpy()
    np.testing.assert_array_equal(eight, [[0, 0], [10, 0], [20, 0], [0, 5], [20, 5], [0, 10], [10, 10], [20, 10]])
    assert warp.border_points(224, 224, 4).shape == (16, 2)
    assert warp.border_points(224, 224, 0).shape == (0, 2)


# --- Gradients, XLA, dynamic shapes --------------------------------------------------------------


def _small_problem(rng):
    image = rng.uniform(size=[1, 9, 11, 2])
    source = rng.uniform(1.3, 7.7, size=[1, 5, 2]) * [1.2, 1.0]
    dest = source + rng.uniform(-1.2, 1.2, size=[1, 5, 2])
    return image, source, dest


@pytest.mark.parametrize("argument", ["image", "source_points", "dest_points"])
def test_gradients_match_finite_differences(rng, argument):
    image, source, dest = _small_problem(rng)
    inputs = {"image": image, "source_points": source, "dest_points": dest}

    def warped(x):
        return warp.sparse_image_warp(**{**inputs, argument: x}, num_boundary_points=1)[0]

    # float64 and a small step: the warp is piecewise smooth (bilinear cells), so the step must not
    # cross a cell boundary; at 1e-6 px none of these samples does.
    theoretical, numerical = tf.test.compute_gradient(warped, [tf.constant(inputs[argument])], delta=1e-6)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6, rtol=1e-5)


def test_interpolate_spline_gradients_match_finite_differences(rng):
    points = rng.uniform(size=[1, 8, 2])
    values = rng.normal(size=[1, 8, 1])
    query = rng.uniform(size=[1, 5, 2])
    for order in (1, 2, 3):
        for index, name in enumerate(["train_points", "train_values", "query_points"]):
            args = [points, values, query]

            def f(x, index=index, order=order, args=args):
                return warp.interpolate_spline(
                    *(args[:index] + [x] + args[index + 1 :]), order=order, regularization_weight=0.01
                )

            theoretical, numerical = tf.test.compute_gradient(f, [tf.constant(args[index])], delta=1e-6)
            np.testing.assert_allclose(
                theoretical[0], numerical[0], atol=1e-5, rtol=1e-4, err_msg=f"order {order}, {name}"
            )


def test_xla_and_eager_agree_forward_and_backward(rng):
    image, source, dest = (x.astype(np.float32) for x in face_warp_problem(rng, batch=2))

    def loss_and_grads(image, source, dest):
        with tf.GradientTape() as tape:
            tape.watch([image, source, dest])
            warped, flow = warp.sparse_image_warp(image, source, dest)
            loss = tf.reduce_sum(tf.square(warped - 0.5))
        return (warped, flow, *tape.gradient(loss, [image, source, dest]))

    args = [tf.constant(x) for x in (image, source, dest)]
    eager = loss_and_grads(*args)
    xla = tf.function(loss_and_grads, jit_compile=True)(*args)
    # Each float32 flow is within ~1e-3 px of the float64 one (test above), so two of them differ
    # by up to ~2e-3 px, and everything downstream (pixels, gradients) by that relative amount.
    for name, a, b, tolerance in zip(
        ["warped", "flow", "d_image", "d_source", "d_dest"], eager, xla, [1e-3, 2e-3, 3e-3, 3e-3, 3e-3]
    ):
        scale = max(np.abs(a.numpy()).max(), 1.0)
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=tolerance * scale, err_msg=name)


def test_dynamic_batch_and_point_count(rng):
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 64, 64, 3], tf.float32),
            tf.TensorSpec([None, None, 2], tf.float32),
            tf.TensorSpec([None, None, 2], tf.float32),
        ]
    )
    def run(image, source, dest):
        return warp.sparse_image_warp(image, source, dest)

    for batch, count in [(1, 5), (3, 68), (2, 1)]:
        image = smooth_image(rng, batch, 64, 64).astype(np.float32)
        source = rng.uniform(8, 56, size=[batch, count, 2]).astype(np.float32)
        dest = source + rng.uniform(-3, 3, size=source.shape).astype(np.float32)
        warped, flow = run(image, source, dest)
        expected, expected_flow = warp.sparse_image_warp(image, source, dest)
        assert warped.shape == (batch, 64, 64, 3)
        np.testing.assert_allclose(flow.numpy(), expected_flow.numpy(), atol=1e-4)


# --- Degenerate input ----------------------------------------------------------------------------


def test_duplicated_landmark_gives_the_same_result_as_without_it(rng):
    image, source, dest = face_warp_problem(rng, batch=2)
    image, source, dest = image.astype(np.float32), source.astype(np.float32), dest.astype(np.float32)
    expected, _ = warp.sparse_image_warp(image, source, dest)
    duplicated = [7, 30, 30, 48]
    warped, flow = warp.sparse_image_warp(
        image, np.concatenate([source, source[:, duplicated]], 1), np.concatenate([dest, dest[:, duplicated]], 1)
    )
    assert np.all(np.isfinite(flow.numpy()))
    np.testing.assert_allclose(warped.numpy(), expected.numpy(), atol=1e-4)


def test_conflicting_duplicates_take_the_mean_displacement():
    points = np.array([[[10.0, 10.0], [10.0, 10.0], [30.0, 12.0], [20.0, 30.0]]])
    values = np.array([[[1.0], [3.0], [0.0], [0.0]]])
    at_duplicate = warp.interpolate_spline(points, values, points[:, :1], order=1)
    assert at_duplicate.numpy()[0, 0, 0] == pytest.approx(2.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "case",
    ["collinear", "single_point", "two_points", "all_identical", "outside_image", "near_duplicates", "no_points"],
)
def test_degenerate_control_points_stay_finite_and_sensible(rng, dtype, case):
    image = smooth_image(rng, 1, 48, 64)
    if case == "collinear":
        source = np.stack([np.linspace(5, 60, 7), np.linspace(10, 40, 7)], -1)
    elif case == "single_point":
        source = np.array([[30.0, 20.0]])
    elif case == "two_points":
        source = np.array([[30.0, 20.0], [40.0, 25.0]])
    elif case == "all_identical":
        source = np.tile([[30.0, 20.0]], [5, 1])
    elif case == "outside_image":
        source = rng.uniform(-500, 500, size=[10, 2])
    elif case == "near_duplicates":
        source = np.array([[30.0, 20.0], [30.0 + 1e-7, 20.0], [10.0, 10.0], [50.0, 40.0]])
    else:
        source = np.zeros([0, 2])
    shift = np.array([2.0, -1.0])
    dest = source + shift
    for boundary in (0, 4):
        warped, flow = warp.sparse_image_warp(
            image.astype(dtype), source[None].astype(dtype), dest[None].astype(dtype), num_boundary_points=boundary
        )
        assert np.all(np.isfinite(warped.numpy())) and np.all(np.isfinite(flow.numpy())), (case, boundary)
        assert np.abs(flow.numpy()).max() <= np.abs(shift).max() * 1.5 + 1e-3, (case, boundary)
        if boundary == 0 and len(source):
            # With no pinned border, a shared displacement is a translation: the spline reproduces it
            # however degenerate the points are.
            np.testing.assert_allclose(flow.numpy()[0], np.broadcast_to(shift, flow.shape[1:]), atol=1e-3)
    with tf.GradientTape() as tape:
        points = tf.constant(dest[None].astype(dtype))
        tape.watch(points)
        loss = tf.reduce_sum(warp.sparse_image_warp(image.astype(dtype), source[None].astype(dtype), points)[0])
    assert np.all(np.isfinite(tape.gradient(loss, points).numpy()))


def test_non_finite_points_raise_a_clear_error(rng):
    image = smooth_image(rng, 1, 32, 32)
    source = rng.uniform(5, 25, size=[1, 6, 2])
    dest = source.copy()
    dest[0, 2, 1] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="train_points must be finite"):
        warp.sparse_image_warp(image, source, dest)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"order": 0}, ValueError, "order must be a positive integer"),
        ({"num_boundary_points": -1}, ValueError, "num_boundary_points must be >= 0"),
        ({"flow_stride": 0}, ValueError, "flow_stride must be >= 1"),
        ({"regularization_weight": -1.0}, ValueError, "regularization_weight must be >= 0"),
    ],
)
def test_bad_arguments_are_named(rng, kwargs, error, message):
    image = smooth_image(rng, 1, 16, 16)
    points = rng.uniform(2, 14, size=[1, 4, 2])
    with pytest.raises(error, match=message):
        warp.sparse_image_warp(image, points, points, **kwargs)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="image must have rank 4"):
        warp.sparse_image_warp(np.zeros([16, 16, 3]), np.zeros([1, 4, 2]), np.zeros([1, 4, 2]))
    with pytest.raises(ValueError, match=r"dest_points must be \[B, N, 2\]"):
        warp.sparse_image_warp(np.zeros([1, 16, 16, 3]), np.zeros([1, 4, 2]), np.zeros([1, 4, 3]))
    with pytest.raises(ValueError, match=r"flow must be \[B, H, W, 2\]"):
        warp.dense_image_warp(np.zeros([1, 16, 16, 3]), np.zeros([1, 16, 16, 3]))
    with pytest.raises(
        ValueError, match=r"source_points \[1, 4, 2\] and dest_points \[1, 5, 2\] must have the same number of points"
    ):
        warp.sparse_image_warp(np.zeros([1, 16, 16, 3]), np.zeros([1, 4, 2]), np.zeros([1, 5, 2]))
    with pytest.raises(
        ValueError,
        match=r"image \[2, 16, 16, 3\] and source_points \[1, 4, 2\] and dest_points \[1, 4, 2\] must have the same batch size",
    ):
        warp.sparse_image_warp(np.zeros([2, 16, 16, 3]), np.zeros([1, 4, 2]), np.zeros([1, 4, 2]))
    with pytest.raises(ValueError, match="must have the same batch size"):
        warp.sparse_image_warp_chip(
            np.zeros([2, 16, 16, 3]), np.zeros([1, 4, 2]), np.zeros([1, 4, 2]), np.eye(3)[None, :2], 8
        )


# --- Coarse flow ---------------------------------------------------------------------------------


def test_coarse_flow_is_close_to_exact_on_face_warps(rng):
    image, source, dest = (x.astype(np.float32) for x in face_warp_problem(rng, batch=4))
    exact, exact_flow = warp.sparse_image_warp(image, source, dest)
    same, same_flow = warp.sparse_image_warp(image, source, dest, flow_stride=1)
    np.testing.assert_array_equal(same.numpy(), exact.numpy())
    # The order-1 spline has a cusp at every control point (phi = r), which bilinear upsampling
    # rounds off: the error is largest right at the landmarks and ~100x smaller on average.
    # Bounds: about 1.5x what these warps measure, so a regression shows.
    bounds = {2: (0.002, 0.3), 4: (0.005, 0.6), 8: (0.02, 1.2)}
    errors = {}
    for stride in bounds:
        coarse, coarse_flow = warp.sparse_image_warp(image, source, dest, flow_stride=stride)
        flow_error = np.abs(coarse_flow.numpy() - exact_flow.numpy())
        image_error = np.abs(coarse.numpy() - exact.numpy())
        print(
            f"stride {stride}: flow error mean {flow_error.mean():.4f} max {flow_error.max():.3f} px; "
            f"image error mean {image_error.mean():.5f} max {image_error.max():.3f}"
        )
        errors[stride] = (flow_error.mean(), flow_error.max())
    for stride, (mean_bound, max_bound) in bounds.items():
        assert errors[stride][0] < mean_bound and errors[stride][1] < max_bound, (stride, errors[stride])


@pytest.mark.parametrize("height, width, stride", [(37, 53, 4), (224, 224, 2), (160, 160, 3), (9, 1, 2)])
def test_float32_flow_upsampling_is_the_matrices_product(rng, height, width, stride):
    # float32 coarse flows are upsampled by ResizeBilinear (align_corners); check it against the
    # float64 product of _flow_grid's interpolation matrices, values and gradients.
    _, upsample_y = warp._flow_grid(height, stride, tf.float64)
    _, upsample_x = warp._flow_grid(width, stride, tf.float64)
    coarse = rng.normal(scale=3.0, size=[2, upsample_y.shape[1], upsample_x.shape[1], 2])
    upstream = rng.normal(size=[2, height, width, 2])
    expected = np.einsum("hi,bijk,wj->bhwk", upsample_y.numpy(), coarse, upsample_x.numpy())
    expected_gradient = np.einsum("hi,bhwk,wj->bijk", upsample_y.numpy(), upstream, upsample_x.numpy())
    coarse32 = tf.constant(coarse, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(coarse32)
        flow = warp._upsample_flow(coarse32, tf.cast(upsample_y, tf.float32), tf.cast(upsample_x, tf.float32))
        loss = tf.reduce_sum(flow * tf.constant(upstream, tf.float32))
    assert flow.dtype == tf.float32 and flow.shape == expected.shape
    # ResizeBilinear's float32 source positions are off by up to ~1e-5 of a node (the ulp of 112 is
    # 7.6e-6), times neighbouring differences of up to ~20 in this rough random field: 2e-4. (Real
    # flows differ by well under a pixel between nodes: errors ~1e-5 px.) A wrong mapping is off by ~1.
    np.testing.assert_allclose(flow.numpy(), expected, atol=2e-4)
    np.testing.assert_allclose(tape.gradient(loss, coarse32).numpy(), expected_gradient, rtol=1e-4, atol=1e-4)


def test_coarse_flow_handles_sizes_not_divisible_by_the_stride(rng):
    image = smooth_image(rng, 1, 37, 53)
    source = rng.uniform(5, 30, size=[1, 8, 2])
    dest = source + rng.uniform(-2, 2, size=source.shape)
    _, exact = warp.sparse_image_warp(image, source, dest)
    _, coarse = warp.sparse_image_warp(image, source, dest, flow_stride=4)
    assert coarse.shape == exact.shape
    # The coarse grid includes the last row and column, so corners are exact.
    for y, x in [(0, 0), (0, 52), (36, 0), (36, 52)]:
        np.testing.assert_allclose(coarse.numpy()[0, y, x], exact.numpy()[0, y, x], atol=1e-9)


# --- A chip of the warped image in one resampling (the identity loss's renderer) --------------------


@pytest.mark.parametrize("flow_stride", [1, 4])
def test_chip_with_the_identity_framing_is_the_warped_image(rng, flow_stride):
    image, source, dest = face_warp_problem(rng, 2)
    full, _ = warp.sparse_image_warp(
        image.astype(np.float32), source.astype(np.float32), dest.astype(np.float32), flow_stride=flow_stride
    )
    chip = warp.sparse_image_warp_chip(
        image.astype(np.float32),
        source.astype(np.float32),
        dest.astype(np.float32),
        np.array([[1.0, 0, 0], [0, 1.0, 0]]),
        224,
        flow_stride=flow_stride,
    )
    # Same points, same flow, same sampling: equal up to float32 rounding of the flow.
    np.testing.assert_allclose(chip.numpy(), full.numpy(), atol=2e-5)


def test_chip_matches_warping_then_cutting_the_chip_out(rng):
    """An inner 160 x 160 chip (scaled, shifted) of a smooth image: within the second interpolation's blur."""
    from normalized_faces.encoders.base import resample_similarity

    image, source, dest = face_warp_problem(rng, 2)
    image = np.stack([cv2.GaussianBlur(i, (0, 0), 3.0) for i in image]).astype(np.float32)
    matrix = np.array([[1.1, 0.0, 25.0], [0.0, 1.2, 10.0]])
    full, _ = warp.sparse_image_warp(image, source.astype(np.float32), dest.astype(np.float32))
    two_steps = resample_similarity(full, matrix, 160)
    one_step = warp.sparse_image_warp_chip(image, source.astype(np.float32), dest.astype(np.float32), matrix, 160)
    difference = np.abs(one_step.numpy() - two_steps.numpy())
    print(f"one resampling vs two: mean {difference.mean():.5f}, max {difference.max():.4f}")
    assert difference.mean() < 2e-3 and difference.max() < 3e-2


@pytest.mark.parametrize("argument", ["image", "dest_points"])
def test_chip_gradients_match_finite_differences(rng, argument):
    image, source, dest = _small_problem(rng)
    inputs = {"image": image, "source_points": source, "dest_points": dest}
    matrix = np.array([[0.9, 0.05, 1.5], [-0.05, 0.9, 2.0]])

    def chip(x):
        return warp.sparse_image_warp_chip(
            **{**inputs, argument: x}, chip_to_image=matrix, chip_size=6, num_boundary_points=1
        )

    theoretical, numerical = tf.test.compute_gradient(chip, [tf.constant(inputs[argument])], delta=1e-6)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6, rtol=1e-5)


def test_spline_on_an_affine_grid_equals_the_spline_at_those_points(rng):
    points = rng.uniform(0, 100, size=[2, 12, 2])
    values = rng.normal(size=[2, 12, 2])
    angle, scale_u, scale_v = 0.3, 1.4, 0.8
    matrix = np.array(
        [
            [scale_u * np.cos(angle), -scale_v * np.sin(angle), 7.0],
            [scale_u * np.sin(angle), scale_v * np.cos(angle), -3.0],
        ]
    )
    us, vs = np.arange(9.0), np.arange(5.0) * 2.5
    for order in (1, 2):
        fit = warp.fit_spline(points, values, order)
        grid = warp.evaluate_spline_on_affine_grid(fit, matrix, us, vs).numpy()
        v, u = np.meshgrid(vs, us, indexing="ij")
        query = np.stack([u, v, np.ones_like(u)], -1) @ matrix.T  # [V, U, 2]
        direct = (
            warp.evaluate_spline(fit, np.tile(query.reshape(1, -1, 2), [2, 1, 1]))
            .numpy()
            .reshape(2, len(vs), len(us), 2)
        )
        np.testing.assert_allclose(grid, direct, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="orthogonal"):
        warp.evaluate_spline_on_affine_grid(fit, np.array([[1.0, 0.5, 0], [0.0, 1.0, 0]]), us, vs)
