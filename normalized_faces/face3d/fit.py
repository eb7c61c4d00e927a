"""Fitting the morphable model to a face's 68 landmarks (the paper's Appendix B.2, adapted).

Parameters: shape coefficients alpha [K], expression coefficients beta [E], a uniform scale s, a
rotation R (yaw, pitch, roll: small for a normalized face, but not zero: its averaged frontal pose
has a few degrees of pitch that the shape would otherwise have to absorb) and a translation
t = (tx, ty, 0), seen through a fixed perspective camera; gradient descent (Adam) on

    sum_i |project(s * R X_i(alpha, beta) + t) - l_i|^2 / sigma^2  +  |alpha|^2  +  |beta|^2

(the landmark error in units of the landmark noise sigma, and a Gaussian prior pulling the
coefficients to the mean face). Landmark-to-vertex correspondence is the model's iBUG mapping
(ibug_to_sfm.txt). The 16 jaw-contour points have no fixed vertex: as in eos, each is matched to
the nearest projected vertex of the model's contour on its side, after a first fit without them,
and the fit goes on with them.

Camera: image x = cx + f * x / (d - z), image y = cy - f * y / (d - z), in pixels with pixel centres
at integers (dlib's convention); d = CAMERA_DISTANCE_MM from the head's origin, f = FOCAL * side,
so that the mean face at s = 1 has about the aligned frame's 55 px between the eyes at 224 px.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from normalized_faces.face3d.morphable_model import SurreyFaceModel

CAMERA_DISTANCE_MM = 1000.0  # a portrait distance: mild perspective
FOCAL = 3.8  # focal length / image side: 0.85 px per mm at the head for 224 px
LANDMARK_SIGMA = 2.0 / 224  # landmark noise, as a fraction of the image side (2 px at 224)
EOS_EQUIVALENT_SIGMA = np.sqrt(3.0 * 30.0) / 224  # eos: lambda 30 against residuals over sigma^2 = 3 px^2


class DegenerateLandmarks(ValueError):
    """The landmarks cannot be a face: not finite, or collapsed to a point or a line."""


@dataclasses.dataclass
class FaceFit:
    """One face's fit. Vertices in the camera frame are s * R X + (tx, ty, 0); `projected` in pixels."""

    coefficients: np.ndarray  # [K]
    expression: np.ndarray  # [E]
    scale: float
    translation: np.ndarray  # [2] (tx, ty) millimetres (scaled model units)
    angles: np.ndarray  # [3] yaw, pitch, roll in radians (rotation_matrix)
    image_size: int
    landmark_vertices: np.ndarray  # [68] vertex each landmark was fitted to (contour points: the chosen ones)
    landmark_error: float  # mean distance in pixels over the landmarks that have a vertex

    def vertices(self, model: SurreyFaceModel, neutral: bool = False) -> np.ndarray:
        """The fitted shape in the model's frame [V, 3] (neutral: the expression zeroed)."""
        return model.shape(self.coefficients, None if neutral else self.expression)

    def camera_vertices(self, model: SurreyFaceModel, neutral: bool = False) -> np.ndarray:
        return pose(self.vertices(model, neutral), self.scale, self.angles, self.translation).numpy()

    def projected(self, model: SurreyFaceModel, neutral: bool = False) -> np.ndarray:
        """[V, 2] pixel positions of the vertices in the fitted image."""
        return project(self.camera_vertices(model, neutral), self.image_size).numpy()


def rotation_matrix(angles):
    """[..., 3] (yaw about y, pitch about x, roll about z; radians) -> [..., 3, 3] R = Rz Ry Rx."""
    angles = tf.convert_to_tensor(angles)
    yaw, pitch, roll = tf.unstack(angles, axis=-1)
    zero, one = tf.zeros_like(yaw), tf.ones_like(yaw)

    def matrix(rows):
        return tf.stack([tf.stack(row, axis=-1) for row in rows], axis=-2)

    c, s = tf.cos(pitch), tf.sin(pitch)
    rx = matrix([[one, zero, zero], [zero, c, -s], [zero, s, c]])
    c, s = tf.cos(yaw), tf.sin(yaw)
    ry = matrix([[c, zero, s], [zero, one, zero], [-s, zero, c]])
    c, s = tf.cos(roll), tf.sin(roll)
    rz = matrix([[c, -s, zero], [s, c, zero], [zero, zero, one]])
    return rz @ ry @ rx


def pose(vertices, scale, angles, translation):
    """Model-frame vertices [..., V, 3] -> camera frame s * R X + (tx, ty, 0); scale [...],
    angles [..., 3], translation [..., 2]."""
    vertices = tf.convert_to_tensor(vertices)
    dtype = vertices.dtype
    rotation = rotation_matrix(tf.cast(angles, dtype))
    turned = tf.einsum("...ij,...vj->...vi", rotation, vertices)
    shift = tf.pad(tf.cast(translation, dtype), [[0, 0]] * (len(translation.shape) - 1) + [[0, 1]])
    return tf.cast(scale, dtype)[..., None, None] * turned + shift[..., None, :]


def project(camera_vertices, image_size: int):
    """[..., V, 3] camera-frame points (mm) -> [..., V, 2] pixels, through the fixed perspective camera."""
    camera_vertices = tf.convert_to_tensor(camera_vertices)
    focal = FOCAL * image_size
    centre = (image_size - 1) / 2.0
    depth = CAMERA_DISTANCE_MM - camera_vertices[..., 2]
    x = centre + focal * camera_vertices[..., 0] / depth
    y = centre - focal * camera_vertices[..., 1] / depth
    return tf.stack([x, y], axis=-1)


def check_landmarks(landmarks: np.ndarray, image_size: int) -> np.ndarray:
    """[68, 2] finite points spread over a face, or DegenerateLandmarks saying what is wrong."""
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.shape != (68, 2):
        raise DegenerateLandmarks(f"expected 68 (x, y) landmarks, got an array of shape {landmarks.shape}")
    if not np.isfinite(landmarks).all():
        raise DegenerateLandmarks("landmarks are not all finite")
    spread = np.linalg.svd(landmarks - landmarks.mean(axis=0), compute_uv=False) / np.sqrt(68)
    if spread[1] < 0.01 * image_size:
        raise DegenerateLandmarks(
            f"landmarks are collapsed to a {'point' if spread[0] < 0.01 * image_size else 'line'} "
            f"(spread {spread[0]:.2f} x {spread[1]:.2f} px in a {image_size} px image)"
        )
    return landmarks


class LandmarkFitter:
    """Fits batches of faces; one instance per model (its tensors are built once)."""

    def __init__(
        self,
        model: SurreyFaceModel | None = None,
        steps: int = 400,
        learning_rate: float = 0.05,
        landmark_sigma: float = LANDMARK_SIGMA,
    ):
        """landmark_sigma: the landmark noise as a fraction of the image side; larger pulls the shape
        harder to the mean face (eos's default regularization, lambda 30 at its sigma^2 = 3 px^2,
        corresponds to about 9.5 px: EOS_EQUIVALENT_SIGMA)."""
        self.model = model or SurreyFaceModel.load()
        self.landmark_sigma = float(landmark_sigma)
        self.steps, self.learning_rate = int(steps), float(learning_rate)
        self._mean = tf.constant(self.model.mean, tf.float32)
        self._basis = tf.constant(self.model.basis, tf.float32)
        self._blendshapes = tf.constant(self.model.blendshapes, tf.float32)

    def _vertices(self, alpha, beta, vertex_index):
        """[B, N, 3] model-frame vertices `vertex_index` [B, N] for coefficients alpha [B, K], beta [B, E]."""
        alpha, beta = tf.cast(alpha, tf.float32), tf.cast(beta, tf.float32)
        mean = tf.gather(self._mean, vertex_index)
        basis = tf.gather(self._basis, vertex_index, axis=1)  # [K, B, N, 3]
        blend = tf.gather(self._blendshapes, vertex_index, axis=1)
        return mean + tf.einsum("bk,kbnc->bnc", alpha, basis) + tf.einsum("be,ebnc->bnc", beta, blend)

    @tf.function(reduce_retracing=True)
    def _descend(self, landmarks, vertex_index, weights, params, image_size, steps):
        """Adam on the energy from params = [alpha [B, K], beta [B, E], log_scale [B], angles [B, 3],
        translation [B, 2]]; returns the parameters after `steps`. landmarks [B, N, 2], weights [B, N]
        (0: unused)."""
        sigma = self.landmark_sigma * tf.cast(image_size, tf.float32)
        size = tf.cast(image_size, tf.float32)
        beta1, beta2 = 0.9, 0.999

        def energy(alpha, beta, log_scale, angles, translation):
            points = pose(self._vertices(alpha, beta, vertex_index), tf.exp(log_scale), angles, translation)
            residual = (project(points, size) - landmarks) / sigma
            data = tf.reduce_sum(weights * tf.reduce_sum(tf.square(residual), -1), -1)
            return tf.reduce_sum(data + tf.reduce_sum(tf.square(alpha), -1) + tf.reduce_sum(tf.square(beta), -1))

        first = [tf.zeros_like(p) for p in params]
        second = [tf.zeros_like(p) for p in params]
        for step in tf.range(1, steps + 1):
            with tf.GradientTape() as tape:
                tape.watch(params)
                total = energy(*params)
            grads = tape.gradient(total, params)
            t = tf.cast(step, tf.float32)
            first = [beta1 * m + (1 - beta1) * g for m, g in zip(first, grads)]
            second = [beta2 * v + (1 - beta2) * tf.square(g) for v, g in zip(second, grads)]
            params = [
                p - self.learning_rate * (m / (1 - beta1**t)) / (tf.sqrt(v / (1 - beta2**t)) + 1e-8)
                for p, m, v in zip(params, first, second)
            ]
        return params

    def _initial_pose(self, landmarks, image_size):
        """Scale and translation that put the mean face's mapped landmarks over the given ones."""
        index = np.where(self.model.landmark_vertices >= 0)[0]
        mean = self.model.mean[self.model.landmark_vertices[index]].astype(np.float64)
        depth = CAMERA_DISTANCE_MM - mean[:, 2].mean()
        px_per_mm = FOCAL * image_size / depth
        centre = (image_size - 1) / 2.0
        target = landmarks[:, index]  # [B, N, 2]
        model_xy = mean[:, :2] * [1.0, -1.0]
        spread_target = np.linalg.norm(target - target.mean(1, keepdims=True), axis=-1).mean(-1)
        spread_model = np.linalg.norm(model_xy - model_xy.mean(0), axis=-1).mean() * px_per_mm
        scale = spread_target / spread_model
        shift_px = target.mean(1) - (centre + scale[:, None] * px_per_mm * model_xy.mean(0))
        translation = shift_px * [1.0, -1.0] / px_per_mm
        return np.log(scale), translation

    def _match_contours(self, landmarks, alpha, beta, log_scale, angles, translation, image_size):
        """For each face, the contour vertex nearest each jaw-contour landmark (in the image)."""
        chosen = np.tile(np.maximum(self.model.landmark_vertices, 0), [len(landmarks), 1])
        for side_landmarks, side_vertices in zip(self.model.contour_landmarks, self.model.model_contours):
            index = np.tile(side_vertices, [len(landmarks), 1])
            points = pose(self._vertices(alpha, beta, index), np.exp(log_scale), angles, translation)
            projected = project(points, image_size).numpy()  # [B, C, 2]
            distance = np.linalg.norm(landmarks[:, side_landmarks, None, :] - projected[:, None], axis=-1)
            chosen[:, side_landmarks] = np.asarray(side_vertices)[distance.argmin(-1)]
        return chosen

    def fit(self, landmarks, image_size: int) -> list[FaceFit]:
        """Fits every face: landmarks [B, 68, 2] (or [68, 2]) pixels in an image_size square image."""
        landmarks = np.asarray(landmarks, np.float64)
        if landmarks.ndim == 2:
            landmarks = landmarks[None]
        landmarks = np.stack([check_landmarks(points, image_size) for points in landmarks])
        batch = len(landmarks)
        log_scale, translation = self._initial_pose(landmarks, image_size)
        angles = np.zeros([batch, 3])
        alpha = np.zeros([batch, self.model.num_components])
        beta = np.zeros([batch, self.model.num_expressions])
        vertex_index = np.tile(np.maximum(self.model.landmark_vertices, 0), [batch, 1])
        weights = np.tile((self.model.landmark_vertices >= 0).astype(np.float64), [batch, 1])
        # Round 1 without the contour; then the contour matched to the fitted shape, twice.
        for round_index in range(3):
            if round_index:
                vertex_index = self._match_contours(landmarks, alpha, beta, log_scale, angles, translation, image_size)
                weights[:, np.concatenate(self.model.contour_landmarks)] = 1.0
            params = [tf.constant(p, tf.float32) for p in (alpha, beta, log_scale, angles, translation)]
            alpha, beta, log_scale, angles, translation = (
                t.numpy().astype(np.float64)
                for t in self._descend(
                    tf.constant(landmarks, tf.float32),
                    tf.constant(vertex_index, tf.int32),
                    tf.constant(weights, tf.float32),
                    params,
                    tf.constant(image_size, tf.int32),
                    tf.constant(self.steps, tf.int32),
                )
            )
        fits = []
        for i in range(batch):
            fit = FaceFit(
                alpha[i],
                beta[i],
                float(np.exp(log_scale[i])),
                translation[i],
                angles[i],
                image_size,
                vertex_index[i],
                0.0,
            )
            used = weights[i] > 0
            projected = fit.projected(self.model)[vertex_index[i][used]]
            fit.landmark_error = float(np.linalg.norm(projected - landmarks[i][used], axis=-1).mean())
            fits.append(fit)
        return fits
