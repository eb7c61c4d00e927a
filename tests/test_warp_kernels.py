"""The warp's fused C++ kernels (normalized_faces/kernels) against the TF-ops composition they replace.

Both paths must be the same function with the same derivative. References: the TF-ops path
(`warp.portable_ops()`), float64 (the TF-ops path, which the fused kernels never run), and central
finite differences of the fused ops themselves (`tf.test.compute_gradient`).
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from normalized_faces import kernels, landmarks, warp

OPS = kernels.fused_ops()
pytestmark = pytest.mark.skipif(
    OPS is None, reason="the fused warp kernels did not build here (no g++?): the warp runs on TF ops"
)


def _problem(batch=3, height=48, width=56, points=12, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    image = tf.constant(rng.random((batch, height, width, channels)), tf.float32)
    source = rng.uniform(0, [width - 1, height - 1], (batch, points, 2))
    dest = source + rng.normal(0, 3, source.shape)
    return image, tf.constant(source, tf.float32), tf.constant(dest, tf.float32)


CHIP_TO_IMAGE = np.array([[0.35, -0.08, 6.0], [0.08, 0.35, 4.0]])  # rotated, scaled: orthogonal columns


def _warp_and_gradients(image, source, dest, **kwargs):
    """Warped image, flow, a chip, and the gradient of a loss on all three w.r.t. every input."""
    with tf.GradientTape() as tape:
        tape.watch([image, source, dest])
        warped, flow = warp.sparse_image_warp(image, source, dest, **kwargs)
        chip = warp.sparse_image_warp_chip(image, source, dest, CHIP_TO_IMAGE, 20, **kwargs)
        weights = tf.cos(tf.range(image.shape[-1], dtype=image.dtype))  # channels count differently
        loss = tf.reduce_sum(warped * weights) + 0.01 * tf.reduce_sum(tf.square(flow)) + tf.reduce_sum(chip**2)
    return [warped, flow, chip, *tape.gradient(loss, [image, source, dest])]


NAMES = ["warped", "flow", "chip", "d image", "d source", "d dest"]


# How far the two float32 paths may differ, relative to each tensor's largest magnitude. Each
# path's flow is within ~3e-5 px of float64 on the small problems and the two paths' flows within
# ~1e-4 px of each other at 224 px (measured 1.1e-4 on an AMD AVX2 machine, whose vector width
# rounds differently from an AVX-512 one); a flow error e moves a sample of a random image by up to
# e (slopes <= 1 per px), hence 2e-4 for the images and the flow. The point gradients of either
# path are within ~1.2e-3 of float64 on 224 px faces (measured; the float32 solve's conditioning,
# the same in both paths): 3e-3 between the two.
TOLERANCE = {"warped": 2e-4, "flow": 2e-4, "chip": 2e-4, "d image": 2e-4, "d source": 3e-3, "d dest": 3e-3}


def _assert_paths_agree(fused, ops):
    for name, a, b in zip(NAMES, fused, ops):
        scale = float(tf.reduce_max(tf.abs(b))) + 1e-6
        error = float(tf.reduce_max(tf.abs(a - b)))
        assert error <= TOLERANCE[name] * scale, f"{name}: fused vs TF ops differ by {error:.2e} (scale {scale:.2e})"


@pytest.mark.parametrize("flow_stride", [1, 3])
@pytest.mark.parametrize("num_boundary_points", [0, 2])
def test_fused_matches_tf_ops_values_and_gradients(flow_stride, num_boundary_points):
    problem = _problem()
    kwargs = dict(flow_stride=flow_stride, num_boundary_points=num_boundary_points)
    fused = _warp_and_gradients(*problem, **kwargs)
    with warp.portable_ops():
        ops = _warp_and_gradients(*problem, **kwargs)
    _assert_paths_agree(fused, ops)


def _assert_as_accurate_as_tf_ops(image, source, dest):
    truth = _warp_and_gradients(*[tf.cast(t, tf.float64) for t in (image, source, dest)])
    fused = _warp_and_gradients(image, source, dest)
    with warp.portable_ops():
        ops = _warp_and_gradients(image, source, dest)
    for name, t, a, b in zip(NAMES, truth, fused, ops):
        fused_error = float(tf.reduce_max(tf.abs(tf.cast(a, tf.float64) - t)))
        ops_error = float(tf.reduce_max(tf.abs(tf.cast(b, tf.float64) - t)))
        # Within 2x of the TF-ops path's own float32 error (both are float32 rounding; the largest
        # rounding error of either path varies with the CPU's vector width: fused/ops measured up
        # to 1.64 on an AMD AVX2 machine, below 1.5 on an AVX-512 one).
        assert fused_error <= 2.0 * ops_error + 1e-6, f"{name}: fused {fused_error:.2e}, TF ops {ops_error:.2e}"
    return fused, ops


def _sample_cells(image, source, dest):
    """The pixel cell (floor of the sample coordinates) of every frame pixel the warp moves and of
    every chip pixel: [N, 2] integers. Pixels pinned by the border points (flow ~0: the pixel
    samples itself) are left out."""
    _, frame_flow = warp.sparse_image_warp(image, source, dest)
    frame_flow = frame_flow.numpy().astype(np.float64)
    height, width = image.shape[1:3]
    ys, xs = np.mgrid[0:height, 0:width]
    frame_query = np.stack([xs, ys], -1)[None] - frame_flow
    _, fit, _, _ = warp._fit_warp(image, source, dest, 1, 0.0, 4, None)
    indices = tf.range(20, dtype=image.dtype)
    chip_flow = warp.evaluate_spline_on_affine_grid(fit, CHIP_TO_IMAGE, indices, indices).numpy()
    u, v = np.meshgrid(np.arange(20.0), np.arange(20.0), indexing="xy")
    points = np.einsum("ij,hwj->hwi", CHIP_TO_IMAGE, np.stack([u, v, np.ones_like(u)], -1))
    chip_query = points[None] - chip_flow.reshape(chip_flow.shape[0], 20, 20, 2)
    moved = np.abs(frame_flow).max(axis=-1) > 1e-3
    return np.concatenate([np.floor(frame_query[moved]), np.floor(chip_query.reshape(-1, 2))])


def _samples_land_in_the_same_cells(image, source, dest) -> bool:
    """Whether both float32 paths sample every moved pixel in the same pixel cell as float64. Where
    one does not (a sample within its rounding error of a pixel edge), bilinear sampling's
    derivative jumps by the image's slope (~1) and comparing gradients measures a coin flip."""
    truth = _sample_cells(*[tf.cast(t, tf.float64) for t in (image, source, dest)])
    fused = _sample_cells(image, source, dest)
    with warp.portable_ops():
        ops = _sample_cells(image, source, dest)
    return bool((fused == truth).all() and (ops == truth).all())


def test_fused_is_as_accurate_as_tf_ops_against_float64():
    # The first seed from 1 whose samples land in the same pixel cells in all three paths (seed 1
    # has a chip sample 2.6e-6 px from a pixel edge, on which the two float32 paths land differently).
    seed = next(s for s in range(1, 30) if _samples_land_in_the_same_cells(*_problem(seed=s)))
    _assert_as_accurate_as_tf_ops(*_problem(seed=seed))


def test_points_outside_the_image_single_channel_and_odd_sizes():
    """Sampling clamps at the border (no coordinate gradient there), for any channel count and size."""
    image, source, dest = _problem(batch=2, height=9, width=2, points=5, channels=1, seed=3)
    dest = dest + tf.constant([[[-20.0, 30.0]]])  # far outside: border values, zero sample gradient
    fused = _warp_and_gradients(image, source, dest, num_boundary_points=1)
    with warp.portable_ops():
        ops = _warp_and_gradients(image, source, dest, num_boundary_points=1)
    _assert_paths_agree(fused, ops)


def test_grid_spline_with_other_value_counts():
    """K != 2 (the generic kernel loop): a spline fitted to 3 values per point."""
    rng = np.random.default_rng(4)
    points = tf.constant(rng.uniform(0, 30, (2, 9, 2)), tf.float32)
    values = tf.constant(rng.normal(size=(2, 9, 3)), tf.float32)
    xs, ys = tf.range(31, dtype=tf.float32), tf.range(17, dtype=tf.float32)

    def evaluate():
        with tf.GradientTape() as tape:
            tape.watch([points, values])
            grid = warp.evaluate_spline_on_grid(warp.fit_spline(points, values, order=1), xs, ys)
            loss = tf.reduce_sum(grid * tf.range(3, dtype=tf.float32))
        return [grid, *tape.gradient(loss, [points, values])]

    fused = evaluate()
    with warp.portable_ops():
        ops = evaluate()
    for a, b in zip(fused, ops):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-4 * float(tf.reduce_max(tf.abs(b))))


def test_grid_spline_gradient_matches_finite_differences():
    rng = np.random.default_rng(5)
    inputs = [
        tf.constant(rng.uniform(-1, 1, (2, 7)), tf.float32),  # xs
        tf.constant(rng.uniform(-1, 1, (2, 5)), tf.float32),  # ys
        tf.constant(rng.uniform(-1, 1, (2, 4)), tf.float32),  # cx
        tf.constant(rng.uniform(-1, 1, (2, 4)), tf.float32),  # cy
        tf.constant(rng.normal(size=(2, 4, 2)), tf.float32),  # weights
        tf.constant(rng.normal(size=(2, 3, 2)), tf.float32),  # linear
    ]
    floor = tf.fill([2], 1e-10)
    theoretical, numerical = tf.test.compute_gradient(
        lambda *args: OPS.nf_grid_spline(*args, floor), inputs, delta=1e-3
    )
    for name, t, n in zip(["xs", "ys", "cx", "cy", "weights", "linear"], theoretical, numerical):
        np.testing.assert_allclose(t, n, atol=5e-3 * max(1.0, np.abs(n).max()), err_msg=name)


def test_warp_sample_gradient_matches_finite_differences():
    rng = np.random.default_rng(6)
    image = tf.constant(rng.random((2, 6, 7, 3)), tf.float32)
    base = tf.constant(rng.uniform(0.5, 5.5, (11, 2)), tf.float32)
    # Fractions kept away from 0 and 1: finite differences across a pixel boundary see the kink.
    flow = tf.constant(rng.uniform(-0.3, 0.3, (2, 11, 2)) + 0.5 - np.modf(base.numpy())[0], tf.float32)
    theoretical, numerical = tf.test.compute_gradient(
        lambda i, f: OPS.nf_warp_sample(i, base, f), [image, flow], delta=1e-3
    )
    for name, t, n in zip(["image", "flow"], theoretical, numerical):
        np.testing.assert_allclose(t, n, atol=2e-3, err_msg=name)


def test_bad_shapes_are_refused_by_the_ops():
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="disagree|must be"):
        OPS.nf_warp_sample(tf.zeros([2, 4, 4, 3]), tf.zeros([5, 2]), tf.zeros([2, 6, 2]))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="disagree|must be"):
        OPS.nf_grid_spline(
            tf.zeros([2, 3]),
            tf.zeros([2, 4]),
            tf.zeros([2, 5]),
            tf.zeros([2, 6]),
            tf.zeros([2, 5, 2]),
            tf.zeros([2, 3, 2]),
            tf.zeros([2]),
        )


def _op_types(function) -> set:
    graph = function.get_concrete_function().graph.as_graph_def()
    types = {node.op for node in graph.node}
    for library_function in graph.library.function:
        types |= {node.op for node in library_function.node_def}
    return types


def test_which_path_a_graph_takes():
    image, source, dest = _problem(batch=1)

    def render():
        return warp.sparse_image_warp(image, source, dest)[0]

    assert {"NfGridSpline", "NfWarpSample"} <= _op_types(tf.function(render))
    with warp.portable_ops():
        assert not {t for t in _op_types(tf.function(render)) if t.startswith("Nf")}
    # Custom ops have no XLA lowering: under jit_compile the warp composes TF ops, same result.
    xla = tf.function(render, jit_compile=True)()
    np.testing.assert_allclose(xla.numpy(), render().numpy(), atol=1e-4)
    # float64 takes the TF ops.
    doubled = [tf.cast(t, tf.float64) for t in (image, source, dest)]
    assert not {t for t in _op_types(tf.function(lambda: warp.sparse_image_warp(*doubled)[0])) if t.startswith("Nf")}


def test_environment_switch_turns_the_kernels_off():
    script = textwrap.dedent(
        """
        import tensorflow as tf
        from normalized_faces import kernels, warp
        assert kernels.fused_ops() is None
        graph = tf.function(lambda: warp.sparse_image_warp(tf.zeros([1, 8, 8, 3]), tf.ones([1, 3, 2]), tf.ones([1, 3, 2]) * 2)[0])
        types = {n.op for n in graph.get_concrete_function().graph.as_graph_def().node}
        assert not [t for t in types if t.startswith("Nf")], types
        """
    )
    env = {**os.environ, kernels.ENVIRONMENT_SWITCH: "tf", "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, capture_output=True)


def test_a_failed_build_falls_back_to_tf_ops_with_the_reason(tmp_path):
    """A compiler that fails: a warning naming the failure, the warp still works (on TF ops)."""
    script = textwrap.dedent(
        """
        import logging, numpy as np, tensorflow as tf
        from normalized_faces import kernels, warp
        assert kernels.fused_ops() is None
        source = [[[2.0, 2.0], [5.0, 4.0], [3.0, 6.0]]]
        out, _ = warp.sparse_image_warp(tf.ones([1, 8, 8, 3]), source, [[[2.5, 2.0], [5.0, 4.5], [3.0, 6.0]]])
        assert np.allclose(out.numpy(), 1.0)
        """
    )
    env = {**os.environ, "CXX": "false", "NORMALIZED_FACES_CACHE": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fused warp kernels are unavailable" in result.stderr and "failed" in result.stderr


def test_the_library_is_cached_per_source_and_tensorflow(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMALIZED_FACES_CACHE", str(tmp_path))
    path = kernels.library_path("g++")
    assert path.parent.parent == tmp_path / "kernels"
    assert kernels.library_path("clang++") != path  # another compiler, another build


def test_the_cache_key_holds_what_march_native_means_on_this_cpu(tmp_path, monkeypatch):
    """A home folder shared by an AVX2 and an AVX-512 machine: each gets its own library."""
    flags = kernels.native_target_flags("g++")
    print("-march=native here:", flags[:120], "...")
    assert "-march=" in flags and ("-mavx2" in flags.split() or "-mno-avx2" in flags.split())
    monkeypatch.setenv("NORMALIZED_FACES_CACHE", str(tmp_path))
    here = kernels.library_path("g++")
    other_cpu = flags.replace("-mno-avx512f", "-mavx512f") if "-mno-avx512f" in flags else flags + " -mno-avx512f"
    monkeypatch.setattr(kernels, "native_target_flags", lambda compiler: other_cpu)
    assert kernels.library_path("g++") != here


# A shared library whose constructor leaves a file behind: proof that it was loaded (and ran).
PLANTED_SOURCE = """
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
  const char *marker = getenv("PLANTED_MARKER");
  if (marker) { FILE *f = fopen(marker, "w"); if (f) { fputs("ran", f); fclose(f); } }
}
"""

CACHE_SCRIPT = """
import os, pathlib, subprocess, sys
import numpy as np, tensorflow as tf
from normalized_faces import kernels, warp
from normalized_faces.checksums import sha256_of

target = kernels.library_path(kernels._compiler())
kernels.make_private_dir(target.parent)
source = pathlib.Path(os.environ["PLANTED_SOURCE"])
subprocess.run(["g++", "-shared", "-fPIC", "-x", "c", str(source), "-o", str(target)], check=True)
case = sys.argv[1]
if case in ("forged_record_open_folder", "no_ops"):
    target.with_name(target.name + kernels.CHECKSUM_SUFFIX).write_text(sha256_of(target) + "\\n")
if case == "forged_record_open_folder":
    os.chmod(target.parent, 0o777)
assert kernels.fused_ops() is None
out, _ = warp.sparse_image_warp(tf.ones([1, 8, 8, 3]), [[[2.0, 2.0], [5.0, 4.0]]], [[[2.5, 2.0], [5.0, 4.5]]])
assert np.allclose(out.numpy(), 1.0)
"""


@pytest.mark.parametrize(
    "case, refused_because",
    [
        ("planted", "has no build record"),  # a library put at the predictable name
        ("forged_record_open_folder", "is writable by others"),  # a record forged in a folder others can write
        ("no_ops", "lacks the ops"),  # this installation's record, but not our kernels
    ],
)
def test_a_library_that_is_not_our_build_is_refused_and_the_warp_falls_back(tmp_path, case, refused_because):
    source = tmp_path / "planted.c"
    source.write_text(PLANTED_SOURCE)
    marker = tmp_path / "constructor_ran"
    env = {
        **os.environ,
        "NORMALIZED_FACES_CACHE": str(tmp_path / "cache"),
        "PLANTED_SOURCE": str(source),
        "PLANTED_MARKER": str(marker),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    env.pop(kernels.ENVIRONMENT_SWITCH, None)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CACHE_SCRIPT), case], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not using the cached warp kernels" in result.stderr and refused_because in result.stderr, result.stderr
    # Refused before loading, its constructor never ran (the no-ops library is checked after loading).
    assert marker.exists() == (case == "no_ops")


def test_training_shaped_warp_agrees_on_face_landmarks():
    """The case training runs: 224 px, 68 face landmarks + 16 border points, batch 4."""
    rng = np.random.default_rng(7)
    image = tf.constant(rng.random((4, 224, 224, 3)), tf.float32)
    source = tf.constant(landmarks.random_face_landmarks(rng, 4), tf.float32)
    dest = tf.constant(landmarks.random_face_landmarks(rng, 4), tf.float32)
    _assert_paths_agree(*_assert_as_accurate_as_tf_ops(image, source, dest))


def test_saved_models_hold_no_custom_op_even_when_traced_before(tmp_path):
    """tf.saved_model.save retraces under its save context, where the warp composes TF ops: a
    SavedModel loads in a process without this package, whatever ran before the save."""
    from tensorflow.core.protobuf import saved_model_pb2

    image, source, dest = _problem(batch=1)
    module = tf.Module()
    module.render = tf.function(
        lambda i, s, d: warp.sparse_image_warp(i, s, d)[0],
        input_signature=[tf.TensorSpec([None, 48, 56, 3]), tf.TensorSpec([None, 12, 2]), tf.TensorSpec([None, 12, 2])],
    )
    expected = module.render(image, source, dest)  # traced here, with the fused kernels
    assert {"NfGridSpline", "NfWarpSample"} <= _op_types(module.render)
    tf.saved_model.save(module, str(tmp_path / "saved"))
    graph = saved_model_pb2.SavedModel.FromString((tmp_path / "saved" / "saved_model.pb").read_bytes()).meta_graphs[0]
    types = {node.op for node in graph.graph_def.node}
    for function in graph.graph_def.library.function:
        types |= {node.op for node in function.node_def}
    assert not [t for t in types if t.startswith("Nf")], sorted(types)
    np.save(tmp_path / "inputs.npy", np.stack([image.numpy()[0]]))
    script = textwrap.dedent(
        f"""
        import numpy as np, tensorflow as tf
        loaded = tf.saved_model.load({str(tmp_path / "saved")!r})
        out = loaded.render(np.load({str(tmp_path / "inputs.npy")!r}), {source.numpy().tolist()!r}, {dest.numpy().tolist()!r})
        np.save({str(tmp_path / "out.npy")!r}, out.numpy())
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected.numpy(), atol=1e-4)
