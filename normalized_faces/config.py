"""What a training run is, in three parts, each field with its help (train_main.py's flags come from here).

  ModelConfig    what shapes the variables. A checkpoint belongs to exactly one: a resumed run
                 refuses a different one, and export / normalize-face rebuild the model from it.
  TrainerConfig  how the variables are learned: data, losses, rendering during training,
                 optimizer, schedule, intervals. May change between resumes.
  RuntimeConfig  where and how this process runs: model_dir, devices, precision, compilation,
                 machine-specific paths. Never part of what a model is.

Flat names are unique across the parts, so callers can say
`TrainConfig().replace(batch_size=8, feature_dim=128)` without knowing where a field lives, and
every field is a flag of the same name (config_flags.define_flags).

Also the names of the files a run directory holds, shared by training, inference and export.
"""

from __future__ import annotations

import dataclasses

from normalized_faces.config_flags import check_choices, leaf_fields, option, replace_nested
from normalized_faces.model import IDENTITY_RENDERS, TEXTURE_DECODERS, TEXTURE_UPSAMPLINGS

RUN_CONFIG_FILE = "config.json"  # the resolved TrainConfig, by part
MODEL_CONFIG_FILE = "model_config.json"  # the Keras model's get_config(): what inference rebuilds
# The training data's mean face, kept with the run: evaluation's baseline (a model that ignores
# identity outputs about this face), exported beside the SavedModel and shipped with the model.
MEAN_FACE_FILE = "mean_face.png"

ENCODERS = ("facenet", "dlib_resnet")
STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
OPTIMIZERS = ("fused_adam", "adam")
# cole2017: the paper's model (normalized_faces/model.py), trained on averages and morphs.
# wang2019: the label-free variant (normalized_faces/wang2019), trained on single photos.
# fvae: expression editing with a flow VAE (normalized_faces/fvae), trained on pairs of one person's photos.
METHODS = ("cole2017", "wang2019", "fvae")
FVAE_RECONSTRUCTION_REGIONS = ("image", "face")
FVAE_OUTPUTS = ("flow", "rgb")


@dataclasses.dataclass
class ModelConfig:
    method: str = option(
        "cole2017",
        "cole2017: the paper's decoder (landmarks + texture + spline warp) trained on averages and morphs. "
        "wang2019: the label-free variant (noisy face + attention mask + patch GAN) trained on single photos "
        "(data prep --mode=photos); its settings are the --wang_* flags. "
        "fvae: expression editing with a flow VAE (Yeh et al.), trained on pairs of one person's photos (data prep "
        "--mode=photos --max_smile=inf --max_mouth_open=inf); its settings are the --fvae_* flags.",
        choices=METHODS,
    )
    encoder: str = option(
        "facenet",
        "Frozen face-recognition network (facenet: the paper's; dlib_resnet: works offline).",
        choices=ENCODERS,
    )
    feature_dim: int = option(1024, "Width of the trained layer on top of the encoder (not stated in the paper).")
    landmark_hidden: tuple = option((512,), "Hidden layer sizes of the landmark MLP.")
    texture_decoder: str = option(
        "cnn", "cnn: the paper's convolutional decoder; fc: its fully connected ablation.", choices=TEXTURE_DECODERS
    )
    texture_base_channels: int = option(256, "Channels at 14 x 14 in the CNN decoder (paper: 256).")
    texture_min_channels: int = option(32, "Smallest channel count in the CNN decoder (paper: 32).")
    texture_fc_size: int | None = option(
        None, "Resolution of the fc decoder's output before resizing (default: the image size).", kind=int
    )
    # "resize" (bilinear x2 + 3 x 3 conv) rather than the paper's 5 x 5 stride-2 transposed convs,
    # whose uneven overlap printed a checkerboard on every texture (model.TEXTURE_UPSAMPLINGS).
    texture_upsampling: str = option(
        "resize",
        "CNN decoder upsampling: resize (bilinear x2 + 3x3 conv; no checkerboard) or transpose (the paper's 5x5 stride-2 deconvs).",
        choices=TEXTURE_UPSAMPLINGS,
    )
    wang_output_size: int = option(320, "wang2019: the output side, 5 * 2^k (thesis: 320; 160 is the CPU recipe).")
    wang_fc_width: int = option(4800, "wang2019: width of the generator's two fully connected layers (thesis: 4800).")
    fvae_base_channels: int = option(
        32, "fvae: channels at 128 x 128, doubling as the size halves (32: the paper's 4 x 4 x 1024 latent)."
    )
    fvae_output: str = option(
        "flow",
        "fvae: flow (the flow VAE) or rgb (the same network predicting pixels: the paper's VAE baseline).",
        choices=FVAE_OUTPUTS,
    )


@dataclasses.dataclass
class TrainerConfig:
    data_dir: str = option("", "Data prep output: train-*/validation-*.tfrecord and metadata.json.")
    batch_size: int = option(32, "Global batch size (split over all replicas).")
    train_steps: int = option(100_000, "Optimizer steps in the whole run.")
    learning_rate: float = option(1e-4, "Adam learning rate.")
    optimizer: str = option(
        "fused_adam",
        "Adam, updated by TensorFlow's fused kernel (fused_adam, faster on the paper's 51M-weight layer) or Keras's ops (adam). "
        "Same updates.",
        choices=OPTIMIZERS,
    )
    landmark_weight: float = option(100.0, "Weight of the landmark MSE loss (landmarks in units of the image size).")
    texture_weight: float = option(1.0, "Weight of the texture MAE loss.")
    identity_weight: float = option(
        0.1, "Weight of the identity loss 1 - cos(embeddings); 0 switches it and the warp off (paper's ablation)."
    )
    wang_texture_weight: float = option(1.0, "wang2019: weight of the masked texture loss (0: off).")
    wang_landmark_weight: float = option(
        1.0, "wang2019: weight of the landmark terms (inside: 160 geometry + symmetry + tilt + expression; 0: off)."
    )
    wang_mask_weight: float = option(1.0, "wang2019: weight of mean(W^p) + total variation of the mask (0: off).")
    wang_mask_power: float = option(1.0, "wang2019: p of the mask's mean(W^p) (thesis: 1).")
    wang_texture_mask_gradient: bool = option(
        False,
        "wang2019: the texture term W * |I - O| also trains W (the thesis taken literally: whitens what the photo's "
        "identity cannot predict, collapses to white if identity is weak); off: W learns only through O.",
    )
    # Not the thesis's 1: against the texture term, a sum over 76,800 values at 160 px (~7,000 at
    # the start), the identity term then had ~1e-4 of the gradient and the faces stayed generic
    # (identity loss 0.96 -> 0.82 in 1,500 steps). 1,500 was chosen from 300 / 1,500 / 7,680 (the
    # paper's model's ratio to its mean texture term) on validation people's pictures at 500 steps:
    # 300 stays generic, 7,680 paints patterns that fool FaceNet (README, "The label-free variant").
    wang_identity_weight: float = option(
        1500.0, "wang2019: weight of the identity loss 1 - cos(embeddings) (thesis: 1, see the README; 0: off)."
    )
    wang_gan_weight: float = option(1.0, "wang2019: weight of the LSGAN generator loss (0: no GAN, the ablation).")
    wang_discriminator_every: int = option(
        4, "wang2019: one discriminator update per this many generator updates (thesis: 4)."
    )
    wang_discriminator_learning_rate: float = option(1e-4, "wang2019: the discriminator's Adam learning rate.")
    fvae_kl_weight: float = option(0.003, "fvae: lambda1, the KL term's weight (paper: 0.003).")
    fvae_coherence_weight: float = option(0.001, "fvae: lambda2, the flow coherence's weight (paper: 0.001).")
    fvae_coherence_alpha: float = option(
        10.0,
        "fvae: alpha of the coherence's colour term exp(-alpha |T_i - T_j|^2), pixels in [-1, 1] (not in the paper).",
    )
    fvae_reconstruction_region: str = option(
        "image",
        "fvae: where the reconstruction error counts: image (the paper: every pixel of T) or face (the convex hull "
        "of T's landmarks; LFW pairs differ in background, hair and framing, which the flow should not chase).",
        choices=FVAE_RECONSTRUCTION_REGIONS,
    )
    fvae_reconstruction_highpass: float = option(
        0.0,
        "fvae: > 0: the reconstruction error high-passed first (its Gaussian blur of this sigma, px at 128 x 128, "
        "subtracted), so lighting that varies slowly across the face costs nothing (0: plain L2, the paper).",
    )
    fvae_max_pose_distance: float = option(
        float("inf"),
        "fvae: pairs only of photos whose landmarks away from the mouth and brows (upper jaw, nose, eyes) lie this "
        "close, in pixels at 128 x 128 (mean distance; inf: every pair of one person's photos, as the paper).",
    )
    fvae_landmark_weight: float = option(
        0.0,
        "fvae: > 0: weight of a landmark term, |t + F(t) - s|^2 summed over the 68 landmarks in px at 128 x 128: the "
        "flow must carry T's landmarks onto S's, geometry an LFW pair's L2 confounds with lighting (0: off, the paper).",
    )
    fvae_self_pairs: float = option(
        0.0,
        "fvae: the fraction of training pairs that are a photo with itself (its L2 over the whole image): they teach "
        "g(S, Z(S)) = S, the identity flow Algorithm 1's edits start from (0: none, the paper).",
    )
    fvae_mask_beta: float = option(0.1, "fvae: beta of the confidence mask's target exp(-|T - g|^2 / beta).")
    fvae_mask_steps: int = option(
        1000, "fvae: the run's last steps train only the confidence mask (the paper trains it after the flow VAE)."
    )
    fvae_gradient_clip: float = option(5.0, "fvae: gradients clipped by value (paper: 5).")
    flow_stride: int = option(1, "1: exact spline warp; s > 1: coarse flow (faster, see README).")
    identity_render: str = option(
        "chip",
        "How the identity loss renders the face it encodes. chip: only the encoder's chip, sampled straight from the texture "
        "(one interpolation; faster). frame: the whole face, then re-framed (the earlier path).",
        choices=IDENTITY_RENDERS,
    )
    identity_jitter: float = option(
        0.0,
        "Strength of the random shift/scale/rotation/mirror + noise each rendered face gets before the identity loss "
        "encodes it (1: +-5%, +-5 degrees, +-4%; 0: off, the paper's). Against the fixed pattern the identity loss grows.",
    )
    shared_residual_weight: float = option(
        0.0,
        "Weight of a loss on the batch-shared high-frequency part of (texture - target): a pattern on every face (0: off).",
    )
    identity_flow_stride: int = option(
        2,
        "Flow stride of the chip the identity loss renders (training only; normalized faces are always rendered with --flow_stride). "
        "2 is ~1.1x faster per step than 1 at a ~1e-3 px mean flow difference.",
    )
    # Read the input photos' encoder outputs from DATA/encoder_cache (built on first use) instead
    # of running the frozen encoder on them every step. Same values, less compute (train_bench).
    encoder_cache: bool = option(
        True,
        "Compute the frozen encoder's outputs for the records' photos once (DATA/encoder_cache/, checked against the records) "
        "instead of at every step. Same values, less time (README's training figures). --noencoder_cache: always run it.",
    )
    seed: int = option(0, "Random seed (weights, data order).")
    shuffle_buffer: int = option(1000, "Records in the shuffle buffer.")
    checkpoint_interval: int = option(1000, "Steps between checkpoints (and progress lines, sample grids).")
    summary_interval: int = option(100, "Steps between TensorBoard scalar updates.")
    validation_interval: int = option(5000, "Steps between validation runs on the validation split.")
    validation_steps: int = option(10, "Batches per validation run.")
    keep_checkpoints: int = option(3, "Checkpoints kept (the newest).")
    nonfinite: str = option(
        "stop",
        "On a NaN/Inf loss: stop with a message naming the step, or skip the batch. Weights are never updated by such a batch.",
        choices=("stop", "skip"),
    )


@dataclasses.dataclass
class RuntimeConfig:
    model_dir: str = option("", "Where checkpoints, logs, samples and config.json go; the run resumes from here.")
    encoder_weights: str | None = option(
        None, "FaceNet weights (.h5 or Sandberg checkpoint); default: the set-up command's cache.", kind=str
    )
    strategy: str = option(
        "default", "tf.distribute strategy; multi_worker_mirrored reads TF_CONFIG.", choices=STRATEGIES
    )
    tpu: str | None = option(None, "TPU name or address for --strategy=tpu.", kind=str)
    landmark_regressor_dir: str | None = option(
        None,
        "wang2019: folder with landmark_regressor.npz/.json (default: the one shipped in normalized_faces/pretrained).",
        kind=str,
    )
    precision: str = option(
        "auto",
        "Keras dtype policy. auto: mixed_bfloat16 on a CPU-only machine whose CPU has AMX bfloat16 tiles (measured "
        "1.33x faster there), else float32 (with AVX512_BF16 alone, mixed_bfloat16 measured 0.75-0.8x the float32 "
        "step): README 'Training'.",
        choices=PRECISIONS,
    )
    jit_compile: bool = option(False, "Compile the train step with XLA.")


@dataclasses.dataclass
class TrainConfig:
    """A run: `model` (what the checkpoint is), `trainer` (how it learns), `runtime` (where it runs)."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    def replace(self, **values) -> TrainConfig:
        """A copy with fields replaced by their flat names (TypeError naming an unknown one)."""
        return replace_nested(self, **values)

    def flat(self) -> dict:
        """{field name: value} over all parts."""
        return {field.name: value for field, value in leaf_fields(self)}

    def to_json(self) -> dict:
        return {part: _jsonable(dataclasses.asdict(getattr(self, part))) for part in ("model", "trainer", "runtime")}

    @classmethod
    def from_json(cls, values: dict) -> TrainConfig:
        """From to_json()'s form, or a flat dict (config.json of runs before the parts existed);
        unknown keys are ignored, so an old run's file still reads."""
        if set(values) <= {"model", "trainer", "runtime"}:
            values = {k: v for part in values.values() for k, v in part.items()}
        known = cls().flat()
        values = {k: (tuple(v) if isinstance(known[k], tuple) else v) for k, v in values.items() if k in known}
        return cls().replace(**values)

    def check(self) -> None:
        check_choices(self)
        for name in ("batch_size", "train_steps", "checkpoint_interval", "summary_interval", "validation_interval"):
            if getattr(self.trainer, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self.trainer, name)}")
        if not self.runtime.model_dir:
            raise ValueError("model_dir is required")


def _jsonable(values: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
