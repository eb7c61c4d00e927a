"""Every Keras layer of the package through the shared layer test (tests/layer_testing.py)."""

import logging

import keras
import numpy as np
import pytest
from layer_testing import run_layer_test

from normalized_faces import fast_ops, model, warp
from normalized_faces import landmarks as lm
from normalized_faces.encoders import dlib_resnet, facenet

RNG = np.random.default_rng(0)


def test_encoder_head():
    run_layer_test(
        model.EncoderHead, {"feature_dim": 8}, RNG.normal(size=[3, 5]), (3, 8), expected_num_trainable_weights=2
    )


def test_landmark_decoder():
    run_layer_test(
        model.LandmarkDecoder,
        {"mean_landmarks": lm.template_landmarks(), "hidden_sizes": (16, 8)},
        RNG.normal(size=[3, 5]),
        (3, 68, 2),
        expected_num_trainable_weights=6,
        float32_output=True,
    )


@pytest.mark.parametrize("side", [6, fast_ops.PHASES_MIN_SIDE])  # direct, by phases
def test_resize_conv(side):
    with fast_ops.every_fast_formulation():  # by phases at 28 px on any CPU
        run_layer_test(
            model.ResizeConv,
            {"channels": 4},
            RNG.normal(size=[2, side, side, 3]),
            (2, 2 * side, 2 * side, 4),
            expected_num_trainable_weights=2,
        )


def test_wide_dense():
    run_layer_test(model.WideDense, {"units": 40}, RNG.normal(size=[3, 5]), (3, 40), expected_num_trainable_weights=2)


@pytest.mark.parametrize("upsampling", ["resize", "transpose"])
def test_cnn_texture_decoder(upsampling):
    kwargs = {"kind": "cnn", "size": 32, "base_channels": 16, "min_channels": 4, "upsampling": upsampling}
    # project (2) + four upsampling convs (2 each) + to_rgb (2)
    run_layer_test(
        model.TextureDecoder, kwargs, RNG.normal(size=[2, 5]), (2, 32, 32, 3), expected_num_trainable_weights=12
    )


def test_fc_texture_decoder():
    # The fc output is resized from 8 to 32 px by tf.image.resize, which returns float32.
    run_layer_test(
        model.TextureDecoder,
        {"kind": "fc", "size": 32, "fc_size": 8},
        RNG.normal(size=[2, 5]),
        (2, 32, 32, 3),
        expected_num_trainable_weights=2,
        float32_output=True,
    )


def test_sparse_image_warp_layer():
    points = lm.template_landmarks()[None].repeat(2, 0) / 7.0
    moved = points + RNG.normal(scale=0.5, size=points.shape)
    run_layer_test(
        warp.SparseImageWarp,
        {"num_boundary_points": 2},
        (RNG.uniform(size=[2, 32, 32, 3]), points, moved),
        (2, 32, 32, 3),
        expected_num_trainable_weights=0,
        run_training_check=False,
        float32_output=True,
    )


def test_dlib_input_scaling():
    run_layer_test(
        dlib_resnet.DlibInputScaling,
        {},
        RNG.uniform(size=[2, 8, 8, 3]),
        (2, 8, 8, 3),
        expected_num_trainable_weights=0,
        run_training_check=False,
    )


def test_padded_add():
    run_layer_test(
        dlib_resnet.PaddedAdd,
        {},
        (RNG.normal(size=[2, 4, 4, 3]), RNG.normal(size=[2, 3, 3, 5])),
        (2, 4, 4, 5),
        expected_num_trainable_weights=0,
        run_training_check=False,
    )


def test_prewhiten():
    run_layer_test(
        facenet.Prewhiten,
        {},
        RNG.uniform(size=[2, 8, 8, 3]),
        (2, 8, 8, 3),
        expected_num_trainable_weights=0,
        run_training_check=False,
        float32_output=True,
    )


def test_model_passes_its_dtype_policy_to_every_trained_layer_and_keeps_it_in_its_config():
    from normalized_faces.encoders import get_encoder

    encoder = get_encoder("dlib_resnet")
    face_model = model.NormalizedFaceModel(
        encoder,
        lm.template_landmarks(),
        feature_dim=8,
        landmark_hidden=(8,),
        texture_base_channels=8,
        texture_min_channels=4,
        name="nf",
        dtype="mixed_bfloat16",
    )
    for layer in (face_model.head, face_model.landmark_decoder, face_model.texture_decoder):
        assert layer.dtype_policy.name == "mixed_bfloat16"
        for sub in layer._flatten_layers(include_self=False):
            assert sub.dtype_policy.name == "mixed_bfloat16", sub.name
    config = face_model.get_config()
    assert config["name"] == "nf" and config["dtype"] == "mixed_bfloat16"
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(face_model))
    assert (
        type(revived) is model.NormalizedFaceModel
        and revived.name == "nf"
        and revived.dtype_policy.name == "mixed_bfloat16"
    )
    # Inference rebuilds in float32 whatever the training precision was.
    assert model.NormalizedFaceModel.for_inference(config).texture_decoder.dtype_policy.name == "float32"


def test_a_weights_path_from_another_machine_falls_back_to_the_default_weights(caplog):
    encoder = dlib_resnet.DlibResNetEncoder()
    config = {**encoder.get_config(), "weights_path": "/another/machine/dlib_face_recognition_resnet_model_v1.dat"}
    with caplog.at_level(logging.WARNING):
        revived = dlib_resnet.DlibResNetEncoder.from_config(config)
    assert "/another/machine" in caplog.text and "not on this machine" in caplog.text
    assert revived.weights_file() == encoder.weights_file()
    image = RNG.uniform(size=[1, 150, 150, 3]).astype(np.float32)
    np.testing.assert_array_equal(revived.encode_chips(image)["embedding"], encoder.encode_chips(image)["embedding"])
