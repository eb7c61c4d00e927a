"""Training throughput on this CPU: where a step's time goes, and each speed lever side by side.

    python benchmarks/train_bench.py [--configs=tiny,paper] [--batch_size=8] [--runs=5] [--levers=...]

For each config (tiny: the tiny decoder with dlib's encoder; paper: the paper's decoder, 256
channels at 14 x 14 and feature_dim 1024, with FaceNet), all in one process on the same inputs:

  breakdown (today's path)   encoder forward on the photos, decoders forward + backward, warp
                             forward + backward, encoder forward + backward on the rendered face,
                             the full train step;
  levers                     the full train step (ms, examples/s, speed-up over "before") for:
    before                   float32, the encoder run on the photos every step, the identity loss
                             rendering the whole face and re-framing it (--identity_render=frame),
                             Keras's Adam (--optimizer=adam)
    cache                    the photos' encoder outputs read from the encoder cache (default)
    +chip                    the identity loss rendering only the encoder's chip (default)
    +fused                   Adam through TensorFlow's fused kernel (default)
    +stride2                 --identity_flow_stride=2 (coarse flow in the identity loss's chip)
    +warp kernels            the warp's fused CPU kernels (normalized_faces/kernels; default); every
                             row above composes the warp of TF ops, as before them
    +fast ops                normalized_faces/fast_ops (default) as this CPU chooses: the
                             projection's input gradient in the kernel's order everywhere; the
                             texture decoder's ResizeConv by output phases and FaceNet's 1 x 1
                             convolutions as matmuls only on CPUs without AVX-512; every row above
                             runs them the direct way
    +every fast op           every fast form whatever the CPU (fast_ops.every_fast_formulation)
    +bf16                    --precision=mixed_bfloat16 (default only on CPUs with AMX, see
                             train.resolve_precision)
    +xla                     --jit_compile (XLA for the whole step; the warp then composes TF ops)
    defaults                 what train_main.py does with no flags (precision auto)
  --allocators=bfc,system runs the whole benchmark once per CPU allocator, each in its own process
  (TF_CPU_ALLOCATOR_USE_BFC=true / false: it is fixed when TensorFlow first allocates), one after
  the other; bfc is the default (normalized_faces/__init__.py), system is TensorFlow's own default.
  --identity_weight=0 (the paper's ablation) is shown as "before" and "cache" too: without the
  identity loss the cached step runs no encoder and no warp at all.

Steps are timed through Keras's own train function (model.make_train_function). Every variant of a
config is built and run once first, then all are timed in turn, --rounds times --runs calls each,
so that drifts in the machine's load (large on shared 2-core machines) reach every variant alike;
the median of all calls is printed. Inputs are random: the figures are about time, not learning.
"""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from timing import median_seconds, side_by_side_ms  # noqa: E402

from normalized_faces import fast_ops, landmarks, train, warp  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 8, "Batch size.")
flags.DEFINE_integer("runs", 5, "Timed calls per round (the median of all rounds' calls is printed).")
flags.DEFINE_integer("rounds", 3, "Rounds: every variant is built first, then timed in turn, --rounds times.")
flags.DEFINE_list("configs", ["tiny", "paper"], "Which configs to time (tiny, paper).")
flags.DEFINE_bool("breakdown", True, "Also print the breakdown of today's step.")
flags.DEFINE_integer("inter_op_threads", 0, "tf.config inter-op threads (0: TensorFlow's default).")
flags.DEFINE_integer("intra_op_threads", 0, "tf.config intra-op threads (0: TensorFlow's default).")

# Each lever on top of the previous ones; "before" is the path before this work, still selectable.
# "warp": "tf-ops" traces the step under warp.portable_ops() (the warp as before its fused kernels);
# "ops": "direct" under fast_ops.direct_formulations() (decoder and FaceNet ops as before).
BEFORE = dict(
    identity_render="frame",
    optimizer="adam",
    precision="float32",
    identity_flow_stride=1,
    warp="tf-ops",
    ops="direct",
)
LEVERS = {
    "before": dict(cache=False, **BEFORE),
    "cache": dict(cache=True, **BEFORE),
    "cache+chip": dict(cache=True, **{**BEFORE, "identity_render": "chip"}),
    "+fused Adam": dict(cache=True, precision="float32", identity_flow_stride=1, warp="tf-ops", ops="direct"),
    "+stride2": dict(cache=True, precision="float32", identity_flow_stride=2, warp="tf-ops", ops="direct"),
    "+warp kernels": dict(cache=True, precision="float32", identity_flow_stride=2, ops="direct"),
    "+fast ops": dict(cache=True, precision="float32", identity_flow_stride=2),
    "+every fast op": dict(cache=True, precision="float32", identity_flow_stride=2, ops="every"),
    "+bf16": dict(cache=True, precision="mixed_bfloat16", identity_flow_stride=2),
    "xla instead (float32, stride 1)": dict(cache=True, precision="float32", identity_flow_stride=1, jit_compile=True),
    "defaults (train_main.py)": dict(cache=True),
}
flags.DEFINE_list("levers", list(LEVERS), "Which step variants to time (default: all, in this order).")
ABLATION = {
    "ablation (no identity loss), before": dict(
        cache=False, optimizer="adam", precision="float32", warp="tf-ops", ops="direct"
    ),
    "ablation (no identity loss), defaults": dict(cache=True),
}
ALLOCATORS = {"bfc": "true", "system": "false"}  # TF_CPU_ALLOCATOR_USE_BFC
flags.DEFINE_list(
    "allocators",
    [],
    "Run everything once per CPU allocator (bfc, system), each in a fresh process; empty: this process's "
    "(bfc unless TF_CPU_ALLOCATOR_USE_BFC says otherwise).",
)


def config_for(name, **overrides):
    settings = dict(encoder="dlib_resnet")
    if name == "paper":
        settings = dict(
            encoder="facenet",
            feature_dim=1024,
            landmark_hidden=(512,),
            texture_base_channels=256,
            texture_min_channels=32,
        )
    settings.update(overrides)
    return train.tiny_config("/tmp/unused", **settings)


def random_batch(rng, size):
    return {
        "image": tf.constant(rng.uniform(size=[size, 224, 224, 3]).astype(np.float32)),
        "texture": tf.constant(rng.uniform(size=[size, 224, 224, 3]).astype(np.float32)),
        "landmarks": tf.constant(landmarks.random_face_landmarks(rng, size).astype(np.float32)),
    }


def make_step(config, batch, cache, warp_kernels="fused", ops="auto"):
    """One full train step of a model built from config (its precision set meanwhile), traced and
    run once: a function that runs one more.

    warp_kernels "tf-ops" traces the step under warp.portable_ops(): the warp composed of TF ops.
    ops "direct" traces it under fast_ops.direct_formulations(): the plain ops, as before; "every"
    under fast_ops.every_fast_formulation(): every fast form, even where this CPU loses with it;
    "auto": fast_ops' choice for this CPU (as train_main.py).
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(train.resolve_precision(config.runtime.precision))
    # The step is traced on its first call, inside these contexts: the graph keeps their ops.
    kernels = warp.portable_ops() if warp_kernels == "tf-ops" else contextlib.nullcontext()
    formulations = {
        "direct": fast_ops.direct_formulations,
        "every": fast_ops.every_fast_formulation,
        "auto": contextlib.nullcontext,
    }[ops]()
    try:
        with kernels, formulations:
            model = train.build_model(config, landmarks.template_landmarks(), 224)
            if cache:
                encoded = model.encoder(batch["image"])
                batch = {
                    **batch,
                    "features": tf.cast(encoded["features"], tf.float32),
                    "embedding": tf.cast(encoded["embedding"], tf.float32),
                }
            iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
            model.make_train_function()
            model.train_function(iterator)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return lambda: model.train_function(iterator)


def make_variant(name, options, batch, **overrides):
    """make_step for config `name` with a LEVERS / ABLATION entry's options (and config overrides)."""
    options = dict(options)
    cache, kernels, ops = options.pop("cache"), options.pop("warp", "fused"), options.pop("ops", "auto")
    return make_step(config_for(name, **options, **overrides), batch, cache, kernels, ops)


def breakdown(config, batch):
    """Where the step's time went before the levers (the warp composed of TF ops)."""
    config = config.replace(**{k: v for k, v in BEFORE.items() if k not in ("warp", "ops")})
    model = train.build_model(config, landmarks.template_landmarks(), 224)
    rng = np.random.default_rng(1)
    features = model.encoder(batch["image"])["features"]

    @tf.function
    def encoder_forward():
        return model.encoder(batch["image"])["embedding"]

    def decoders_gradients():
        with tf.GradientTape() as tape:
            points, texture = model.decode(features)
            loss = tf.reduce_mean(tf.abs(texture - batch["texture"])) + tf.reduce_mean(
                tf.square(points - batch["landmarks"])
            )
        return tape.gradient(loss, model.trainable_variables)

    decoders = tf.function(decoders_gradients)
    with fast_ops.direct_formulations():
        decoders_direct = tf.function(decoders_gradients)
        decoders_direct.get_concrete_function()  # traced here, inside the context

    texture = tf.Variable(batch["texture"])
    predicted = tf.Variable(landmarks.random_face_landmarks(rng, FLAGS.batch_size).astype(np.float32))

    @tf.function
    def render():
        with warp.portable_ops(), tf.GradientTape() as tape:
            loss = tf.reduce_sum(model.render(texture, predicted))
        return tape.gradient(loss, [texture, predicted])

    rendered = tf.Variable(batch["image"])

    @tf.function
    def encoder_backward():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model.encoder(rendered)["embedding"])
        return tape.gradient(loss, rendered)

    return {
        "encoder forward (photos)": 1000 * median_seconds(lambda: encoder_forward().numpy(), FLAGS.runs),
        "decoders forward + backward (direct)": 1000
        * median_seconds(lambda: [g.numpy() for g in decoders_direct()], FLAGS.runs),
        "decoders forward + backward": 1000 * median_seconds(lambda: [g.numpy() for g in decoders()], FLAGS.runs),
        "warp forward + backward": 1000 * median_seconds(lambda: [g.numpy() for g in render()], FLAGS.runs),
        "encoder forward + backward": 1000 * median_seconds(lambda: encoder_backward().numpy(), FLAGS.runs),
    }


def run_per_allocator() -> None:
    """This benchmark re-run in a fresh process per allocator in --allocators (same other flags)."""
    for name in FLAGS.allocators:
        if name not in ALLOCATORS:
            raise app.UsageError(f"--allocators: {name!r} is not one of {sorted(ALLOCATORS)}")
    child_args = [a for a in sys.argv[1:] if not a.startswith("--allocators")] + ["--allocators="]
    for name in FLAGS.allocators:
        print(f"\n=== CPU allocator {name} (TF_CPU_ALLOCATOR_USE_BFC={ALLOCATORS[name]})", flush=True)
        env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": ALLOCATORS[name]}
        subprocess.run([sys.executable, os.path.abspath(__file__), *child_args], env=env, check=True)


def main(argv):
    del argv
    if FLAGS.allocators:
        return run_per_allocator()
    tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_threads)
    rng = np.random.default_rng(0)
    batch = random_batch(rng, FLAGS.batch_size)
    print(
        f"batch {FLAGS.batch_size}, {os.cpu_count()} CPUs, TensorFlow {tf.__version__}, CPU allocator "
        f"{train.cpu_allocator()}; ms per step (median of {FLAGS.rounds} alternating rounds of {FLAGS.runs})"
    )
    for name in FLAGS.configs:
        base = config_for(name)
        print(
            f"\n{name} config: {base.model.encoder} encoder, feature_dim {base.model.feature_dim}, "
            f"texture CNN {base.model.texture_base_channels} channels at 14 x 14"
        )
        if FLAGS.breakdown:
            for part, ms in breakdown(base, batch).items():
                print(f"  {part:<32} {ms:8.1f} ms")
        steps = {}
        for lever in FLAGS.levers:
            steps[lever] = make_variant(name, LEVERS[lever], batch)
        for lever, options in ABLATION.items():
            steps[lever] = make_variant(name, options, batch, identity_weight=0.0)  # no warp, no encoder pass
        print(f"  {'step variant':<40} {'ms/step':>8} {'examples/s':>11} {'vs before':>10}")
        timed = side_by_side_ms(steps, FLAGS.rounds, FLAGS.runs)
        before = timed.get("before")
        for lever, ms in timed.items():
            ratio = f"{before / ms:9.2f}x" if before and lever in LEVERS else ""
            print(f"  {lever:<40} {ms:8.1f} {1000 * FLAGS.batch_size / ms:11.1f} {ratio}", flush=True)
        del steps
        keras.backend.clear_session()  # this config's models and graphs: freed before the next
        gc.collect()


if __name__ == "__main__":
    app.run(main)
