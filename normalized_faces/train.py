"""Training: strategy, model, data, checkpoints with auto-resume, summaries, progress (train_main.py is the CLI).

`train(config)` is idempotent: the same config and model_dir resume from the latest checkpoint; a
finished run does nothing and says so. Everything a run needs to be understood later is written to
model_dir: config.json (resolved), checkpoints/, logs/ (TensorBoard scalars and image grids),
samples/step_N.png (input | texture | landmarks | rendered, a row per validation face).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

from normalized_faces import config as config_lib
from normalized_faces import data, visualize
from normalized_faces.config import MEAN_FACE_FILE, MODEL_CONFIG_FILE, RUN_CONFIG_FILE, TrainConfig
from normalized_faces.cpu_flags import cpu_flags
from normalized_faces.model import NormalizedFaceModel
from normalized_faces.optim import FusedAdam

log = logging.getLogger(__name__)
# Both are Adam with the same mathematics and checkpoints; fused_adam updates each variable in one
# TensorFlow kernel (normalized_faces/optim.py), adam with Keras's elementwise ops.
OPTIMIZERS = {"fused_adam": FusedAdam, "adam": keras.optimizers.Adam}
assert tuple(OPTIMIZERS) == config_lib.OPTIMIZERS


def tiny_config(model_dir: str, **overrides) -> TrainConfig:
    """Like big_vision's runlocal: a tiny model on built-in synthetic data, a minute on a CPU.

    The data (8 synthetic identities, 3 photos each, 40 morphs) is made by the real data prep job
    in model_dir/tiny_data (data_prep.synthetic.make_tiny_data, which train_main.py calls on first
    use); the encoder is the offline dlib ResNet.
    """
    settings = dict(
        data_dir=str(pathlib.Path(model_dir) / "tiny_data"),
        model_dir=model_dir,
        encoder="dlib_resnet",
        batch_size=8,
        train_steps=200,
        learning_rate=1e-3,
        feature_dim=128,
        landmark_hidden=(128,),
        texture_base_channels=64,
        texture_min_channels=16,
        checkpoint_interval=50,
        summary_interval=25,
        validation_interval=100,
        validation_steps=2,
        shuffle_buffer=64,
        wang_output_size=160,  # used by --method=wang2019 only
        wang_fc_width=64,
    )
    if overrides.get("method") == "fvae":
        settings.update(fvae_base_channels=4, fvae_mask_steps=50, learning_rate=3e-4)
    if overrides.get("method") == "wang2019":
        # Its tanh output saturated (to flat colours, for good: tanh's gradient vanishes) within
        # 100 steps at 1e-3 on this data; at 2e-4 it learns a face.
        settings["learning_rate"] = 2e-4
    settings.update(overrides)
    return TrainConfig().replace(**settings)


def cpu_has_amx_bfloat16() -> bool:
    """Whether this CPU has AMX bfloat16 tile arithmetic (Linux /proc/cpuinfo flag amx_bf16)."""
    return "amx_bf16" in cpu_flags()


def resolve_precision(precision: str) -> str:
    """ "auto" -> mixed_bfloat16 on a CPU-only machine whose CPU has AMX (bfloat16 matrix tiles),
    else float32. benchmarks/train_bench.py, README "Training": on an Intel Xeon with AMX
    mixed_bfloat16 made the paper's step 1.33x faster (1,152 -> 866 ms, batch 8; oneDNN runs the
    bfloat16 convolutions on AMX tiles), on a CPU with AVX512_BF16 but no AMX 0.75-0.8x the float32
    step. GPUs: not measured. Other values pass through."""
    if precision != "auto":
        return precision
    if tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"):
        return "float32"
    return "mixed_bfloat16" if cpu_has_amx_bfloat16() else "float32"


def cpu_allocator() -> str:
    """Which allocator holds CPU tensors in this process: "bfc" (TensorFlow's best-fit-with-coalescing
    allocator, this package's default: see normalized_faces/__init__.py) or "system" (malloc)."""
    # Only the BFC allocator keeps statistics: before TensorFlow 2.21 asking the system allocator
    # raised; 2.21 answers zeros. A tensor held during the question makes BFC's peak non-zero.
    held = tf.ones([256])  # noqa: F841 (alive while the statistics are read)
    try:
        info = tf.config.experimental.get_memory_info("CPU:0")
    except ValueError:
        return "system"
    return "bfc" if info["peak"] > 0 else "system"


def make_strategy(name: str, tpu: str | None = None) -> tf.distribute.Strategy:
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker_mirrored":
        # The cluster comes from TF_CONFIG (each worker runs the same command with its own index).
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def build_model(config: TrainConfig, mean_landmarks, image_size: int) -> keras.Model:
    """The run's model (config.model.method's; encoder with real weights inside), built and
    compiled, every variable created; call inside a strategy scope."""
    if config.model.method == "fvae":
        return _build_flow_vae(config)
    from normalized_faces.encoders import get_encoder

    options = {"weights_path": config.runtime.encoder_weights} if config.runtime.encoder_weights else {}
    encoder = get_encoder(config.model.encoder, aligned_size=image_size, **options)
    model = _method_model(config, encoder, mean_landmarks, image_size)
    # Loss scaling also gives every precision the same guard: a step whose gradients are not
    # finite is skipped (weights untouched), whatever nonfinite policy the run then applies.
    optimizer = keras.optimizers.LossScaleOptimizer(
        OPTIMIZERS[config.trainer.optimizer](config.trainer.learning_rate),
        initial_scale=2.0**15 if resolve_precision(config.runtime.precision) == "mixed_float16" else 1.0,
    )
    model.compile(optimizer=optimizer, jit_compile=config.runtime.jit_compile)
    model.build_for_training()  # every variable exists before a restore
    return model


def _build_flow_vae(config: TrainConfig) -> keras.Model:
    """The flow VAE: no face encoder; Adam with the paper's betas and gradients clipped by value."""
    from normalized_faces.fvae.model import FlowVAE

    trainer = config.trainer
    model = FlowVAE(
        base_channels=config.model.fvae_base_channels,
        output_kind=config.model.fvae_output,
        kl_weight=trainer.fvae_kl_weight,
        coherence_weight=trainer.fvae_coherence_weight,
        coherence_alpha=trainer.fvae_coherence_alpha,
        reconstruction_highpass=trainer.fvae_reconstruction_highpass,
        landmark_weight=trainer.fvae_landmark_weight,
        mask_beta=trainer.fvae_mask_beta,
        mask_from_step=max(trainer.train_steps - trainer.fvae_mask_steps, 0),
    )
    adam = keras.optimizers.Adam(trainer.learning_rate, beta_1=0.9, beta_2=0.999, clipvalue=trainer.fvae_gradient_clip)
    model.compile(optimizer=adam, jit_compile=config.runtime.jit_compile)
    model.build_for_training()
    return model


def _method_model(config: TrainConfig, encoder, mean_landmarks, image_size: int) -> keras.Model:
    if config.model.method == "wang2019":
        from normalized_faces import landmark_regressor
        from normalized_faces.wang2019.model import WangModel

        regressor_dir = config.runtime.landmark_regressor_dir or landmark_regressor.PRETRAINED_DIR
        trainer = config.trainer
        return WangModel(
            encoder,
            landmark_regressor.load_pretrained(regressor_dir),
            output_size=config.model.wang_output_size,
            fc_width=config.model.wang_fc_width,
            image_size=image_size,
            texture_weight=trainer.wang_texture_weight,
            landmark_weight=trainer.wang_landmark_weight,
            mask_weight=trainer.wang_mask_weight,
            identity_weight=trainer.wang_identity_weight,
            gan_weight=trainer.wang_gan_weight,
            mask_power=trainer.wang_mask_power,
            texture_mask_gradient=trainer.wang_texture_mask_gradient,
            discriminator_every=trainer.wang_discriminator_every,
            discriminator_learning_rate=trainer.wang_discriminator_learning_rate,
        )
    return NormalizedFaceModel(
        encoder,
        mean_landmarks,
        feature_dim=config.model.feature_dim,
        landmark_hidden=tuple(config.model.landmark_hidden),
        texture_decoder=config.model.texture_decoder,
        texture_base_channels=config.model.texture_base_channels,
        texture_min_channels=config.model.texture_min_channels,
        texture_fc_size=config.model.texture_fc_size,
        texture_upsampling=config.model.texture_upsampling,
        image_size=image_size,
        landmark_weight=config.trainer.landmark_weight,
        texture_weight=config.trainer.texture_weight,
        identity_weight=config.trainer.identity_weight,
        flow_stride=config.trainer.flow_stride,
        identity_render=config.trainer.identity_render,
        identity_flow_stride=config.trainer.identity_flow_stride,
        identity_jitter=config.trainer.identity_jitter,
        shared_residual_weight=config.trainer.shared_residual_weight,
    )


def is_chief(strategy) -> bool:
    """Whether this process writes files (the only one, or worker 0 / the chief of a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type or task_type == "chief":
        return True
    if task_type == "worker":
        return resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()
    return False


class _Checkpoints:
    """tf.train.CheckpointManager that is safe under MultiWorkerMirroredStrategy: every worker
    saves (the save is collective), non-chief workers into a scratch folder they then delete."""

    def __init__(self, model, directory: str, keep: int, strategy):
        extra = {}
        if getattr(model, "discriminator_optimizer", None) is not None:  # wang2019's second optimizer
            extra["discriminator_optimizer"] = model.discriminator_optimizer
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, **extra)
        self.is_chief = is_chief(strategy)
        task_id = getattr(getattr(strategy, "cluster_resolver", None), "task_id", 0)
        self.directory = directory if self.is_chief else os.path.join(directory, f".worker_{task_id}")
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=keep)
        self.chief_manager = (
            tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=keep)
            if not self.is_chief
            else self.manager
        )

    def restore(self):
        latest = self.chief_manager.latest_checkpoint
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        return latest

    def save(self, step: int):
        path = self.manager.save(checkpoint_number=step)
        if not self.is_chief:
            tf.io.gfile.rmtree(self.directory)
        return path


class _Supervisor(keras.callbacks.Callback):
    """Checkpoints, progress line, sample grids, and the non-finite-loss policy, at each interval."""

    def __init__(self, config: TrainConfig, checkpoints: _Checkpoints, sample_batch, writer, start_step: int):
        super().__init__()
        self.config = config
        self.checkpoints = checkpoints
        self.sample_batch = sample_batch
        self.writer = writer
        self.start_step = start_step
        self.started = time.time()
        self.nonfinite_steps = []
        self.error = None

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        self._nonfinite_seen = 0

    def on_train_batch_end(self, batch, logs=None):
        # Epochs are checkpoint intervals; when train_steps is not a multiple of one, the last
        # epoch ends early here (on_epoch_end still checkpoints), not at the interval's end.
        if self._step() >= self.config.trainer.train_steps:
            self.model.stop_training = True
        count = int(float((logs or {}).get("nonfinite_batches", 0)))
        if count > self._nonfinite_seen:
            self._nonfinite_seen = count
            step = self._step() + 1  # the step that was attempted (and skipped by the optimizer)
            self.nonfinite_steps.append(step)
            message = f"non-finite loss at step {step}: that batch's update was skipped, the weights are unchanged"
            if self.config.trainer.nonfinite == "stop":
                self.error = f"{message}; training stopped (--nonfinite=skip carries on past such batches)"
                self.model.stop_training = True
            else:
                log.warning("%s (--nonfinite=skip)", message)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        step = self._step()
        if self.error is not None:
            return  # stopping: no checkpoint, progress line or samples from this epoch
        path = self.checkpoints.save(step)
        if self.checkpoints.is_chief:
            log.info("checkpoint %s", path)
        elapsed = time.time() - self.started
        done = step - self.start_step
        rate = done / elapsed if elapsed > 0 else 0.0
        remaining = (self.config.trainer.train_steps - step) / rate if rate > 0 else float("nan")
        losses = " ".join(f"{k}={float(v):.4f}" for k, v in logs.items() if "nonfinite" not in k)
        if self.nonfinite_steps:
            losses += f" | {len(self.nonfinite_steps)} non-finite batches skipped so far"
        if self.checkpoints.is_chief:
            print(
                f"step {step}/{self.config.trainer.train_steps} {losses} | {rate:.2f} steps/s, ETA {remaining / 60:.1f} min",
                flush=True,
            )
        if self.writer is not None:
            with self.writer.as_default(step=step):
                for key, value in logs.items():
                    tf.summary.scalar(key if key.startswith("val_") else f"train/{key}", float(value))
                if self.sample_batch is not None and self.checkpoints.is_chief:
                    grid = sample_grid(self.model, self.sample_batch)
                    tf.summary.image("samples (input | texture | landmarks | rendered)", grid[None], max_outputs=1)
                    samples = pathlib.Path(self.config.runtime.model_dir) / "samples"
                    samples.mkdir(exist_ok=True)
                    visualize.write_png(samples / f"step_{step:07d}.png", grid)
            self.writer.flush()


def sample_grid(model, batch) -> np.ndarray:
    """A row per face: input | predicted texture | predicted landmarks on the input | rendered face
    (wang2019: input | noisy face | attention mask | output face with the regressor's landmarks;
    fvae: source | target | output | flow | confidence mask)."""
    if "source" in batch:
        return _flow_vae_grid(model, batch)
    outputs = model(batch["image"])
    rows = []
    if "mask" in outputs:
        for i in range(int(batch["image"].shape[0])):
            face = np.clip(outputs["rendered"][i].numpy(), 0, 1)
            size = face.shape[0]
            rows.append(
                [
                    batch["image"][i].numpy(),
                    tf.image.resize(outputs["noisy"][i], [size, size]).numpy(),
                    np.repeat(tf.image.resize(outputs["mask"][i], [size, size]).numpy(), 3, axis=-1),
                    visualize.draw_landmarks(face, outputs["landmarks"][i].numpy()),
                ]
            )
        return visualize.image_grid(rows, column_titles=["input", "noisy face", "mask", "output + landmarks"])
    for i in range(int(batch["image"].shape[0])):
        image = batch["image"][i].numpy()
        rows.append(
            [
                image,
                np.clip(outputs["texture"][i].numpy(), 0, 1),
                visualize.draw_landmarks(image, outputs["landmarks"][i].numpy()),
                np.clip(outputs["rendered"][i].numpy(), 0, 1),
            ]
        )
    return visualize.image_grid(rows, column_titles=["input", "texture", "landmarks", "rendered"])


def _flow_vae_grid(model, batch) -> np.ndarray:
    out = model(batch)
    to_unit = lambda images: (np.asarray(images) + 1.0) / 2.0  # noqa: E731
    rows = []
    for i in range(int(batch["source"].shape[0])):
        row = [to_unit(batch["source"][i]), to_unit(batch["target"][i]), np.clip(to_unit(out["output"][i]), 0, 1)]
        if "flow" in out:
            size = out["flow"].shape[1]
            row.append(visualize.flow_to_rgb(out["flow"][i].numpy() * (size - 1) / 2.0))
        row.append(np.repeat(out["mask"][i].numpy(), 3, axis=-1))
        rows.append(row)
    titles = ["source", "target", "output"] + (["flow"] if "flow" in out else []) + ["mask"]
    return visualize.image_grid(rows, column_titles=titles)


def _datasets(config: TrainConfig, model, image_size: int, step: int):
    """(train, validation or None, a small validation batch for the sample grid or None)."""
    trainer = config.trainer
    if config.model.method == "fvae":
        from normalized_faces.fvae import data as fvae_data

        pairs = {
            "region": trainer.fvae_reconstruction_region,
            "max_pose_distance": trainer.fvae_max_pose_distance,
            "with_landmarks": trainer.fvae_landmark_weight > 0,
        }
        train_data = fvae_data.pair_dataset(
            fvae_data.load_photos(trainer.data_dir, "train"),
            trainer.batch_size,
            seed=trainer.seed + step,
            self_pairs=trainer.fvae_self_pairs,  # training only: validation scores pairs of two photos
            **pairs,
        )
        try:
            photos = fvae_data.load_photos(trainer.data_dir, "validation")
            validation = fvae_data.pair_dataset(photos, trainer.batch_size, seed=trainer.seed, augment=False, **pairs)
            sample_batch = next(iter(fvae_data.pair_dataset(photos, 4, seed=trainer.seed, augment=False, **pairs)))
        except (FileNotFoundError, ValueError):
            validation, sample_batch = None, None
        return train_data, validation, sample_batch

    keys, cache = data.TRAINING_KEYS, None
    if config.model.method == "wang2019":
        keys = ("image", "landmarks")  # single photos: no texture target
    if trainer.encoder_cache:
        from normalized_faces import encoder_cache

        cache = encoder_cache.build(
            trainer.data_dir,
            model.encoder,
            report=lambda line: print(line, flush=True),
            fallback_root=config.runtime.model_dir,  # where DATA is read-only
        )
        # The photo itself is no longer needed by the paper's step: its encoder outputs stand in
        # for it (wang2019 still compares pixels with it).
        keep_image = config.model.method == "wang2019"
        keys = tuple(k for k in keys if keep_image or k != "image") + ("features", "embedding")
    train_data = data.make_dataset(
        trainer.data_dir,
        "train",
        batch_size=trainer.batch_size,
        shuffle_buffer=trainer.shuffle_buffer,
        repeat=True,
        seed=trainer.seed + step,
        image_size=image_size,
        keys=keys,
        encoder_cache=cache,
    )
    try:
        validation = data.make_dataset(
            trainer.data_dir,
            "validation",
            batch_size=trainer.batch_size,
            repeat=True,
            image_size=image_size,
            keys=keys,
            encoder_cache=cache,
        )
        sample_batch = next(
            iter(data.make_dataset(trainer.data_dir, "validation", batch_size=4, image_size=image_size))
        )
    except (FileNotFoundError, StopIteration):
        validation, sample_batch = None, None
    return train_data, validation, sample_batch


def _write_config(config: TrainConfig, model_dir: pathlib.Path, is_chief: bool) -> None:
    """Writes config.json (by part); refuses a model_dir whose run has a different model part."""
    path = model_dir / RUN_CONFIG_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        if "model" not in saved:  # a flat config.json from before the parts and the upsampling choice
            saved.setdefault("texture_upsampling", "transpose")
        previous = dataclasses.asdict(TrainConfig.from_json(saved).model)
        current = dataclasses.asdict(config.model)
        changed = [k for k in current if previous[k] != current[k]]
        if changed:
            raise ValueError(
                f"{model_dir} holds a run with a different model "
                f"({', '.join(f'{k}: {previous[k]!r} -> {current[k]!r}' for k in changed)}); "
                "use a new --model_dir"
            )
    if is_chief:
        model_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config.to_json(), indent=2, sort_keys=True))


def train(config: TrainConfig) -> dict:
    """Trains (or resumes) a run. Returns {"step", "status", "history"}.

    The dtype policy (config.runtime.precision) is set for the run and the previous global policy is
    restored afterwards, so library callers are not left in mixed precision.
    """
    previous_policy = keras.mixed_precision.global_policy()
    try:
        return _train(config)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(config: TrainConfig) -> dict:
    config.check()
    keras.utils.set_random_seed(config.trainer.seed)
    model_dir = pathlib.Path(config.runtime.model_dir)
    precision = resolve_precision(config.runtime.precision)
    if config.runtime.precision == "auto":
        print(f"precision auto -> {precision}", flush=True)
    if precision != "float32":
        keras.mixed_precision.set_global_policy(precision)
    strategy = make_strategy(config.runtime.strategy, config.runtime.tpu)
    # After the strategy: asking the allocator starts TensorFlow's runtime, and a multi-worker
    # strategy must configure its collective ops before that.
    print(f"CPU tensors: {cpu_allocator()} allocator (TF_CPU_ALLOCATOR_USE_BFC)", flush=True)
    chief = is_chief(strategy)
    _write_config(config, model_dir, chief)
    metadata = data.load_metadata(config.trainer.data_dir)
    image_size = int(metadata.get("image_size", 224))
    if metadata.get("mean_landmarks") is None:
        raise ValueError(
            f"{config.trainer.data_dir} holds no faces (metadata.json has no mean landmarks: data prep accepted "
            "no photo; its rejected.jsonl says why)"
        )
    with strategy.scope():
        model = build_model(config, metadata["mean_landmarks"], image_size)
    if chief:  # what export and normalize-face rebuild the model from (with a checkpoint)
        (model_dir / MODEL_CONFIG_FILE).write_text(json.dumps(model.get_config(), indent=2))
        if not (model_dir / MEAN_FACE_FILE).exists():
            visualize.write_png(
                model_dir / MEAN_FACE_FILE, data.mean_face(config.trainer.data_dir, image_size=image_size)
            )
    checkpoints = _Checkpoints(model, str(model_dir / "checkpoints"), config.trainer.keep_checkpoints, strategy)
    restored = checkpoints.restore()
    step = int(model.optimizer.iterations.numpy())
    if restored:
        print(f"resumed from {restored} at step {step}", flush=True)
    if step >= config.trainer.train_steps:
        print(
            f"nothing to do: {model_dir} is already trained to step {step} (train_steps={config.trainer.train_steps})",
            flush=True,
        )
        return {"step": step, "status": "already_done", "history": {}}

    train_data, validation, sample_batch = _datasets(config, model, image_size, step)
    interval = config.trainer.checkpoint_interval
    epochs = math.ceil(config.trainer.train_steps / interval)
    writer = tf.summary.create_file_writer(str(model_dir / "logs")) if chief else None
    supervisor = _Supervisor(config, checkpoints, sample_batch, writer, step)
    callbacks = [supervisor]
    if chief:
        callbacks.append(
            keras.callbacks.TensorBoard(
                str(model_dir / "logs" / "keras"), update_freq=config.trainer.summary_interval, write_graph=False
            )
        )
    fit_options = {}
    if validation is not None:
        fit_options = dict(
            validation_data=validation,
            validation_steps=config.trainer.validation_steps,
            validation_freq=max(1, config.trainer.validation_interval // interval),
        )
    # A damaged shard stops fit with tf.data's "corrupted record at N": said again with the file's name.
    with data.naming_bad_records(data.dataset_files(config.trainer.data_dir), image_size):
        history = model.fit(
            train_data,
            epochs=epochs,
            initial_epoch=step // interval,
            steps_per_epoch=interval,
            callbacks=callbacks,
            verbose=0,
            **fit_options,
        )
    final = int(model.optimizer.iterations.numpy())
    if final < config.trainer.train_steps and not supervisor.error:
        print(
            f"{config.trainer.train_steps - final} of the run's batches were skipped (non-finite loss): "
            f"at step {final}; run again to continue",
            flush=True,
        )
    if supervisor.error:
        raise FloatingPointError(f"{supervisor.error}. Last checkpoint: {checkpoints.chief_manager.latest_checkpoint}")
    if chief:
        print(
            f"trained to step {final}; checkpoints in {model_dir / 'checkpoints'}, TensorBoard logs in {model_dir / 'logs'}",
            flush=True,
        )
    return {
        "step": final,
        "status": "trained",
        "history": history.history,
        "nonfinite_steps": supervisor.nonfinite_steps,
    }
