"""The fast recipe's pieces, each tested on its own."""

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from research import data, distribute, ema, loop, losses, models, optim, predict
from research.config import Config, ConfigError
from research.models import airbench
from research.models.batchnorm import FusedBatchNorm
from research.sources.datasets import synthetic
from tests.conftest import make_runner


def test_patch_whitening_decorrelates_patches():
  keras.mixed_precision.set_global_policy("float32")
  model = models.MODELS.get("airbench")(10, 16)
  split, _ = synthetic(256, 16, 10)
  assert models.init_from_data(model, split.images) == ["whiten"]
  whitened = keras.Model(model.inputs, model.get_layer("whiten").output)
  out = whitened.predict(split.images.astype(np.float32), verbose=0).reshape(-1, 24)
  cov = np.cov(out[:, :12].T)
  np.testing.assert_allclose(cov, np.eye(12), atol=0.05)
  np.testing.assert_allclose(out[:, 12:], -out[:, :12], atol=1e-4)
  assert "whiten" not in {v.path.split("/")[0] for v in model.trainable_variables
                          if v.name == "kernel"}


def test_partial_identity_passes_the_input_through():
  kernel = airbench.PartialIdentity()((3, 3, 4, 8))
  x = np.random.default_rng(0).normal(size=(1, 5, 5, 4)).astype(np.float32)
  y = tf.nn.conv2d(x, kernel, 1, "SAME").numpy()
  np.testing.assert_allclose(y[..., :4], x, atol=1e-6)
  assert np.abs(y[..., 4:]).sum() > 0


def test_float32_gelu_matches_keras_gelu():
  x = tf.constant(np.linspace(-5, 5, 101), tf.bfloat16)
  np.testing.assert_allclose(
      tf.cast(airbench.Gelu()(x), tf.float32),
      tf.cast(keras.layers.Activation("gelu")(tf.cast(x, tf.float32)), tf.bfloat16),
      atol=1e-2)
  assert airbench.Gelu(dtype="mixed_bfloat16")(x).dtype == tf.bfloat16


def test_label_smoothing_matches_the_formula():
  logits = tf.constant([[2.0, 0.0, -1.0]])
  log_p = tf.nn.log_softmax(logits).numpy()[0]
  loss = losses.cross_entropy(label_smoothing=0.3)({"logits": logits},
                                                   {"target": tf.one_hot([0], 3)})
  expected = -(0.8 * log_p[0] + 0.1 * log_p[1] + 0.1 * log_p[2])
  np.testing.assert_allclose(loss.numpy()[0], expected, rtol=1e-5)


def test_linear_schedule_warms_up_then_decays_to_zero():
  config = Config(learning_rate=2.0, schedule="linear", warmup_steps=10, train_steps=110)
  lr = optim.schedule(config)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 5, 10, 60, 110)],
                             [0.0, 1.0, 2.0, 1.0, 0.0], atol=1e-6)


def test_warmup_from_and_decay_to_bound_the_schedule():
  config = Config(learning_rate=2.0, schedule="linear", warmup_steps=10, train_steps=110,
                  warmup_from=0.2, decay_to=0.1)
  lr = optim.schedule(config)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 5, 10, 60, 110, 200)],
                             [0.4, 1.2, 2.0, 1.1, 0.2, 0.2], atol=1e-6)


def test_tta_averages_flipped_and_shifted_views():
  images = tf.constant(np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)), tf.float32)
  np.testing.assert_array_equal(predict._shift(images, 1)[:, 1:, 1:], images[:, :-1, :-1])
  np.testing.assert_array_equal(predict._shift(images, -1)[:, :-1, :-1], images[:, 1:, 1:])
  model = lambda x, training: tf.reduce_mean(x[:, :, :4], axis=[1, 2])  # Not flip-invariant.
  plain, flipped = model(images, False), model(tf.reverse(images, [2]), False)
  logits = lambda mode: predict.predict(model, images, mode)["logits"]
  np.testing.assert_allclose(logits("none"), plain)
  np.testing.assert_allclose(logits("flip"), (plain + flipped) / 2,
                             rtol=1e-6)
  mirrored = lambda x: (model(x, False) + model(tf.reverse(x, [2]), False)) / 2
  shifted = (mirrored(predict._shift(images, 1)) + mirrored(predict._shift(images, -1))) / 2
  np.testing.assert_allclose(logits("flip_translate"),
                             (plain + flipped) / 4 + shifted / 2, rtol=1e-6)
  assert not np.allclose(shifted, (plain + flipped) / 2)


def test_tta_final_only_keeps_the_final_metrics_and_drops_the_other_views(make_config,
                                                                          caplog):
  caplog.set_level("INFO")
  overrides = dict(model="baseline_cnn", image_size=32, train_steps=4, eval_every=2,
                   tta="flip_translate", deterministic=True)
  every = loop.train(make_config(**overrides))
  final_only = loop.train(make_config(tta_final_only=True, **overrides).replace(
      model_dir=make_config().model_dir + "_final_only"))
  assert final_only.eval_history[-1] == every.eval_history[-1]  # The same last eval,
  assert final_only.eval_history[0][1] != every.eval_history[0][1]  # not the others.
  assert "eval at step 2: 66 validation examples |" in caplog.text
  assert "eval at step 4: 66 validation examples (tta flip_translate) |" in caplog.text


def _task(make_config, strategy="default", **overrides):
  config = make_config(**overrides)
  split = data.load(config)
  config = config.resolve(len(split.train), len(split.class_names))
  strategy = distribute.make_strategy(strategy)
  state, runner = make_runner(config, strategy)
  batches = iter(strategy.distribute_datasets_from_function(
      lambda ctx: data.train_dataset(split.train, config, 0, ctx)))
  return state, runner, batches, split, config


def test_batchnorm_lr_scale_multiplies_batchnorm_updates(make_config):
  updates = []
  for scale in (1.0, 8.0):
    keras.utils.set_random_seed(0)
    state, runner, batches, _, config = _task(make_config,
                                              param_rules=f"batchnorm(lr_scale={scale})",
                                              weight_decay=0.0, precision="float32")
    before = [v.numpy().copy() for v in state.model.trainable_variables]
    runner.train_loop(batches, tf.constant(1))
    updates.append([(v.name, v.numpy() - b)
                    for v, b in zip(state.model.trainable_variables, before)])
  assert any(name == "beta" for name, _ in updates[0])
  for (name, delta), (_, scaled) in zip(*updates):
    ratio = 8.0 if name in ("gamma", "beta") else 1.0
    np.testing.assert_allclose(scaled, ratio * delta, rtol=1e-3, atol=1e-6)


def test_ema_is_evaluated_and_swapped_back(make_config):
  state, runner, batches, split, config = _task(make_config, ema_decay=0.9)
  runner.train_loop(batches, tf.constant(5))
  weights = [w.numpy().copy() for w in state.ema.weights]
  averages = [a.numpy() for a in state.ema.averages]
  assert any(not np.allclose(w, a) for w, a in zip(weights, averages))
  with_ema = runner.evaluate(split.eval, 32)
  for w, saved in zip(state.ema.weights, weights):  # Swapped back after evaluation.
    np.testing.assert_array_equal(w.numpy(), saved)
  for w, a in zip(state.ema.weights, averages):
    w.assign(a)
  np.testing.assert_allclose(runner.evaluate(split.eval, 32)["loss"], with_ema["loss"], rtol=1e-5)


def test_lookahead_pulls_a_slow_copy_and_resets_the_weights_every_k_steps():
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
  [kernel] = model.weights
  w0, w1, w2 = (np.full((2, 1), v, np.float32) for v in (1.0, 3.0, 5.0))
  kernel.assign(w0)
  lookahead = ema.Lookahead(model, every=2, decay=0.5, total_steps=4)
  kernel.assign(w1)
  lookahead.update()  # Step 1: no sync.
  np.testing.assert_array_equal(kernel.numpy(), w1)
  np.testing.assert_array_equal(lookahead.averages[0].numpy(), w0)
  kernel.assign(w2)
  lookahead.update()  # Step 2: sync with decay 0.5 * (2/4)^3.
  decay = 0.5 * (2 / 4) ** 3
  np.testing.assert_allclose(lookahead.averages[0].numpy(), decay * w0 + (1 - decay) * w2)
  np.testing.assert_array_equal(kernel.numpy(), lookahead.averages[0].numpy())


@pytest.mark.parametrize("strategy", ["default", "mirrored"])
def test_lookahead_runs_in_the_compiled_loop(make_config, strategy):
  state, runner, batches, _, config = _task(make_config, strategy, lookahead_every=2)
  assert isinstance(state.ema, ema.Lookahead)
  initial = [a.numpy().copy() for a in state.ema.averages]
  runner.train_loop(batches, tf.constant(1))
  assert all(np.array_equal(i, a.numpy()) for i, a in zip(initial, state.ema.averages))
  runner.train_loop(batches, tf.constant(1))  # Step 2: a sync moves the slow copy...
  assert any(not np.array_equal(i, a.numpy()) for i, a in zip(initial, state.ema.averages))
  for w, a in zip(state.ema.weights, state.ema.averages):  # ...and resets the weights to it.
    np.testing.assert_array_equal(w.numpy(), a.numpy())
  runner.train_loop(batches, tf.constant(1))  # Step 3: the weights move on alone.
  assert any(not np.array_equal(w.numpy(), a.numpy())
             for w, a in zip(state.ema.weights, state.ema.averages))


def test_lookahead_and_ema_are_exclusive(make_config):
  with pytest.raises(ConfigError, match="choose one"):
    make_config(lookahead_every=5, ema_decay=0.9)


@pytest.mark.parametrize("strategy", ["default", "mirrored"])
def test_whitening_bias_trains_only_for_its_epochs(make_config, strategy):
  state, runner, batches, _, config = _task(make_config, strategy, model="airbench",
                                            param_rules="whitening_bias(epochs=0.6)",
                                            learning_rate=0.5)
  [bias] = models.whitening_biases(state.model)
  [index] = [i for i, v in enumerate(state.model.trainable_variables) if v is bias]
  assert runner.spec.frozen_after == ((index, 3),)  # After 0.6 of 5 steps an epoch.
  values = [bias.numpy().copy()]
  for _ in range(5):
    runner.train_loop(batches, tf.constant(1))
    values.append(bias.numpy().copy())
  moved = [not np.array_equal(a, b) for a, b in zip(values, values[1:])]
  assert moved == [True, True, True, False, False]


def test_whitening_bias_epochs_needs_a_whitening_layer(make_config):
  with pytest.raises(ConfigError, match="whitening_bias.* matches no trainable variable of "
                                        "--model=resnet8"):
    _task(make_config, model="resnet8", param_rules="whitening_bias(epochs=1)")


def test_switching_weight_averaging_is_a_checkpoint_difference(make_config):
  plain = make_config()
  assert plain.averaging == "none"
  assert make_config(ema_decay=0.9).averaging == "ema"
  lookahead = make_config(lookahead_every=5)
  assert lookahead.checkpoint_differences(plain) == [
      "averaging: 'none' in the model dir, 'lookahead' now"]


def test_a_change_of_the_checkpoint_structure_is_refused_by_name(make_config):
  # Either change wraps or adds optimizer state: the checkpoint would not load. One run
  # for both: a refused resume leaves the model dir as it was.
  loop.train(make_config(train_steps=3))
  for overrides, difference in (
      (dict(precision="mixed_float16"), "loss_scaling: 'none' in the model dir, "
                                        "'mixed_float16' now"),
      (dict(grad_accum_steps=2), "gradient_accumulation: 'none' in the model dir, 'on' now")):
    with pytest.raises(ConfigError, match=re.escape(f"holds a different run ({difference})")):
      loop.train(make_config(train_steps=6, allow_config_change=True, **overrides))


def test_averages_start_from_the_data_initialized_weights(make_config):
  # Two steps, no sync yet: the saved (slow) weights must hold the data-whitening
  # kernel, not the random one the model was built with.
  kernels = {}
  for name, overrides in (("plain", {}), ("lookahead", dict(lookahead_every=5))):
    config = make_config(model="airbench", train_steps=2, eval_every=2, **overrides)
    config = config.replace(model_dir=f"{config.model_dir}_{name}")
    loop.train(config)
    saved = keras.models.load_model(os.path.join(config.model_dir, "model.keras"))
    kernels[name] = saved.get_layer("whiten").kernel.numpy()
  np.testing.assert_allclose(kernels["lookahead"], kernels["plain"], rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("scale", [False, True])  # airbench's; the ResNets'
def test_fused_batchnorm_matches_keras_batchnorm(dtype, scale):
  x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, (8, 5, 5, 4)), tf.float32)
  fused = FusedBatchNorm(momentum=0.6, scale=scale, dtype=dtype)
  plain = keras.layers.BatchNormalization(momentum=0.6, scale=scale, dtype=dtype)
  outputs, grads = [], []
  for layer in (fused, plain):
    layer.build(x.shape)
    layer.beta.assign(tf.fill([4], 0.5))
    if scale:
      layer.gamma.assign(tf.constant([0.5, 1.0, 1.5, 2.0]))
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x, training=True)
      loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.range(4, dtype=tf.float32))
    outputs.append(tf.cast(y, tf.float32))
    grads.append(tape.gradient(loss, [x, *layer.trainable_variables]))
  tol = 1e-4 if dtype == "float32" else 3e-2
  np.testing.assert_allclose(outputs[0], outputs[1], atol=tol)
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, atol=tol * 10)
  np.testing.assert_allclose(fused.moving_mean, plain.moving_mean, rtol=1e-2)
  n = 8 * 5 * 5  # The fused op's batch variance has Bessel's correction.
  np.testing.assert_allclose(fused.moving_variance - 0.6,
                             (plain.moving_variance - 0.6) * n / (n - 1), rtol=2e-2)
  # At inference the two differ by that correction of the moving variance.
  np.testing.assert_allclose(tf.cast(fused(x, training=False), tf.float32),
                             tf.cast(plain(x, training=False), tf.float32), atol=0.1)


def test_fused_batchnorm_synchronized_takes_the_statistics_of_every_replica():
  # Two replicas whose batches differ: synchronized statistics are those of both.
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  x = np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1) * [[[[1.0]]]]
  batches = strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensor_slices(x).batch(4))
  with strategy.scope():
    layers = {kind: kind(synchronized=True, momentum=0.0)
              for kind in (FusedBatchNorm, keras.layers.BatchNormalization)}
    for layer in layers.values():
      layer.build((None, 1, 1, 1))
  for layer in layers.values():
    strategy.run(lambda batch: layer(batch, training=True), (next(iter(batches)),))
  means = [layer.moving_mean.numpy() for layer in layers.values()]
  np.testing.assert_allclose(means[0], means[1])
  np.testing.assert_allclose(means[0], [1.5])  # Of 0, 1, 2 and 3; one replica's: 0.5 or 2.5


def test_whitening_bias_decay_gives_it_a_schedule_that_ends_with_its_epochs(make_config):
  config = make_config(model="airbench", schedule="linear", learning_rate=0.5,
                       param_rules="whitening_bias(epochs=0.6, decay=True)").resolve(160, 10)
  state, _ = make_runner(config)
  run, bias = state.optimizer.optimizers
  assert [v.path for v in bias.variables if "whiten" in v.path]  # Its momentum slot.
  rates = lambda optimizer: [float(optimizer._learning_rate(s)) for s in (0, 3, 6)]
  assert rates(run) == pytest.approx([0.5, 0.25, 0.0])   # Over the run's 6 steps...
  assert rates(bias) == pytest.approx([0.5, 0.0, 0.0])   # ...and over its first 3.
