"""Step kinds and what plugs into the step: SAM, mixup, metrics, regularizers."""

import glob
import os
import shutil
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from research import data, distribute, events, loop, metrics, optim, plugins, predict, regularizers
from research import steps
from research.ideas import sam  # noqa: F401  (registers the step kind)
from tests.conftest import make_runner


def test_sam_on_a_quadratic_follows_the_papers_update():
  # L(w) = 0.5 w^T A w: SAM's gradient is A (w + rho A w / |A w|), taken at w.
  a = np.array([[3.0, 0.5], [0.5, 1.0]], np.float32)
  w0 = np.array([[1.0], [-2.0]], np.float32)
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
  [kernel] = model.trainable_variables
  kernel.assign(w0)
  state = types.SimpleNamespace(model=model, optimizer=None)

  def forward_backward(batch):
    with tf.GradientTape() as tape:
      loss = 0.5 * tf.reduce_sum(kernel * tf.matmul(a, kernel))
    return steps.Pass({}, loss[None], loss, tape.gradient(loss, [kernel]))

  rho = 0.1
  step = steps.STEPS.build(f"sam(rho={rho})")
  result = tf.function(lambda: step(state, forward_backward, {}))()
  g = a @ w0
  expected = a @ (w0 + rho * g / np.linalg.norm(g))
  np.testing.assert_allclose(result.grads[0].numpy(), expected, rtol=1e-5)
  np.testing.assert_allclose(float(result.loss), 0.5 * (w0.T @ a @ w0).item(), rtol=1e-6)
  np.testing.assert_array_equal(kernel.numpy(), w0)  # The weights are put back.


def _weights(config, strategy=None):
  loop.train(config, strategy)
  return keras.models.load_model(f"{config.model_dir}/model.keras").get_weights()


@pytest.mark.parametrize("overrides", [
    dict(augment="crop,flip,mixup(alpha=0.4)"),
    dict(augment="cutmix", step="sam(rho=0.05)"),
    # The histograms hook takes the step's gradients as a process starts, a resumed one
    # too: SAM's w + e - e is not w in float32, so the hook must put the weights back.
    dict(step="sam(rho=0.05)", hooks="histograms(every=100)"),
    dict(grad_accum_steps=2, lookahead_every=2),
    dict(model="improved_cnn"),  # Dropout: its masks' generator state is checkpointed.
    # 5 steps an epoch: at 12 px, then at 14 from step 2 (resumed at 3), at 16 from 4.
    dict(low_res_epochs=0.8, low_res_stages=2),
])
def test_resume_is_bitwise_exact(overrides, make_config):
  # Checkpoints at 3, 6 and 8: with --grad_accum_steps=2, 3 is in the middle of an update.
  config = make_config(train_steps=8, checkpoint_every=3, eval_every=8, deterministic=True,
                       keep_checkpoints=3, **overrides)
  whole_dir = config.model_dir + "_whole"
  whole = _weights(config.replace(model_dir=whole_dir))
  # The same run stopped at step 3 (trained once): its checkpoints after 3, and the
  # model.keras it had not written yet, removed...
  shutil.copytree(whole_dir, config.model_dir)
  directory = os.path.join(config.model_dir, "checkpoints")
  for path in glob.glob(f"{directory}/ckpt-[68].*") + [f"{directory}/checkpoint",
                                                       f"{config.model_dir}/model.keras"]:
    os.remove(path)
  assert sorted(os.listdir(directory)) == ["ckpt-3.data-00000-of-00001", "ckpt-3.index"]
  resumed = loop.train(config)  # ...and the same command resumes it, from step 3.
  assert [step for step, _ in resumed.train_history] == [6, 8]
  for a, b in zip(whole, keras.models.load_model(f"{config.model_dir}/model.keras").get_weights()):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("overrides", [dict(augment="crop,mixup"), dict(step="sam")])
def test_default_and_mirrored_agree(overrides, make_config):
  # baseline_cnn: no BatchNorm, whose batch statistics are per replica.
  config = make_config(model="baseline_cnn", image_size=32, train_steps=6, log_every=3,
                       deterministic=True, **overrides)
  default = loop.train(config.replace(model_dir=config.model_dir + "_default"))
  mirrored = loop.train(config.replace(model_dir=config.model_dir + "_mirrored"),
                        distribute.make_strategy("mirrored"))
  for (_, a), (_, b) in zip(default.train_history, mirrored.train_history):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4)
  np.testing.assert_allclose(default.final_eval["loss"], mirrored.final_eval["loss"],
                             rtol=1e-4)


def _reference_metrics(probs, labels, num_classes, bins=15):
  """ECE and per-class accuracy in NumPy, the textbook way."""
  confidence, guess = probs.max(-1), probs.argmax(-1)
  hit = guess == labels
  ece = 0.0
  for b in range(bins):
    lo, hi = b / bins, (b + 1) / bins
    in_bin = (confidence > lo) & (confidence <= hi) if b else (confidence <= hi)
    if in_bin.any():
      ece += in_bin.mean() * abs(hit[in_bin].mean() - confidence[in_bin].mean())
  per_class = [hit[labels == c].mean() if (labels == c).any() else 0.0
               for c in range(num_classes)]
  return ece, per_class


@pytest.mark.parametrize("strategy", ["default", "mirrored"])
def test_metrics_match_numpy_exactly_with_a_padded_last_batch(strategy, make_config):
  config = make_config(metrics="ece,per_class_accuracy", tta="flip", num_classes=4)
  split = data.load(config)
  config = config.resolve(len(split.train), len(split.class_names))
  state, runner = make_runner(config, distribute.make_strategy(strategy), split.class_names)
  result = runner.evaluate(split.eval, 14)  # 64 examples: the last batch is padded.
  probs = predict.probabilities(state.model, split.eval.images, "flip")
  ece, per_class = _reference_metrics(probs, split.eval.labels, 4)
  assert result["examples"] == len(split.eval) == 64
  assert result["ece"] == pytest.approx(ece, abs=1e-5)
  for name, value in zip(split.class_names, per_class):
    assert result[f"per_class_accuracy/{name}"] == pytest.approx(value, abs=1e-6)
  assert result["accuracy"] == pytest.approx(np.mean(probs.argmax(-1) == split.eval.labels))


def test_metrics_reach_tensorboard_and_the_console(make_config, caplog):
  from research import events  # pylint: disable=g-import-not-at-top
  config = make_config(metrics="ece,per_class_accuracy", train_steps=3, eval_every=3)
  with caplog.at_level("INFO"):
    loop.train(config)
  scalars = events.scalars(f"{config.model_dir}/eval")
  assert {"ece", "per_class_accuracy/class_0", "accuracy"} <= set(scalars)
  assert "ece" in events.scalars(f"{config.model_dir}/train")
  assert any("eval at step 3" in r.message and " ece " in r.message for r in caplog.records)


@pytest.mark.parametrize("name, reference", [
    ("l2(scale=0.01)", lambda w: 0.01 * np.sum(w ** 2)),
    ("l1(scale=0.001)", lambda w: 0.001 * np.sum(np.abs(w))),
])
def test_regularizers_penalize_kernels_only(name, reference):
  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
                            keras.layers.BatchNormalization(), keras.layers.Dense(2)])
  penalty = regularizers.REGULARIZERS.build(name)(model)
  kernels = [v.numpy() for v in model.trainable_variables if v.name == "kernel"]
  assert len(kernels) == 2
  np.testing.assert_allclose(float(penalty), sum(reference(k) for k in kernels), rtol=1e-5)


def test_a_regularizer_shrinks_the_weights(make_config):
  norms = {}
  for name in ("", "l2(scale=0.05)"):
    config = make_config(regularizers=name, weight_decay=0.0, train_steps=6,
                         model_dir=make_config().model_dir + name)
    loop.train(config)
    model = keras.models.load_model(f"{config.model_dir}/model.keras")
    norms[name] = float(tf.linalg.global_norm(
        [w for w in model.trainable_weights if w.name == "kernel"]))
  assert norms["l2(scale=0.05)"] < norms[""]
  # The penalty is logged beside the loss (which does not include it), at the weights of
  # each logged step: at the last one, the saved model's.
  logged = events.scalars(f"{config.model_dir}/train")
  assert "regularization" not in events.scalars(f"{make_config().model_dir}/train")
  steps_logged, values = logged["regularization"]
  assert steps_logged[-1] == 6
  np.testing.assert_allclose(values[-1], 0.05 * norms["l2(scale=0.05)"] ** 2, rtol=1e-4)


def test_core_metrics_are_always_on_and_extra_ones_follow():
  plugins.load()
  built = metrics.build("ece(bins=10),per_class_accuracy", 3, ["a", "b", "c"])
  assert list(built) == ["loss", "accuracy", "top5", "ece(bins=10)", "per_class_accuracy"]


def test_a_model_with_an_auxiliary_output_trains_with_its_loss(make_config, tmp_path):
  config = make_config(model="baseline_cnn_aux", image_size=32,
                       loss="aux_cross_entropy(weight=0.5)", train_steps=12, log_every=6,
                       eval_every=12, optimizer="adam", learning_rate=2e-3, weight_decay=0.0)
  result = loop.train(config)
  first, last = result.train_history[0][1]["loss"], result.train_history[-1][1]["loss"]
  assert last < first
  model = keras.models.load_model(f"{config.model_dir}/model.keras")
  out = predict.outputs(model, np.zeros((2, 32, 32, 3), np.float32))
  assert set(out) == {"logits", "aux_logits"} and out["logits"].shape == (2, 10)
  # The auxiliary head counts in the loss: its weight changes the training loss.
  plain = loop.train(config.replace(loss="aux_cross_entropy(weight=0.0)",
                                    model_dir=str(tmp_path / "plain")))
  assert plain.train_history[0][1]["loss"] < first


@pytest.mark.parametrize("name", ["lion", "lamb", "muon"])
def test_keras_optimizers_from_the_registry_train(name, make_config):
  config = make_config(optimizer=name, learning_rate=1e-3, train_steps=6, log_every=3,
                       eval_every=6, weight_decay=1e-4)
  history = loop.train(config).train_history
  assert all(np.isfinite(m["loss"]) for _, m in history)


def test_muon_orthogonalizes_conv_filters_and_renormalizes_them():
  # airbench94_muon's step on a [kh, kw, in, out] kernel: rescale it to norm sqrt(out),
  # then subtract lr x the orthogonalized gradient of the [kh*kw*in, out] matrix.
  from research.ideas.optimizers import Muon  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  kernel = tf.Variable(rng.normal(size=(3, 3, 8, 16)).astype(np.float32))
  gradient = tf.constant(rng.normal(size=(3, 3, 8, 16)).astype(np.float32))
  optimizer = Muon(0.1, momentum=0.6, nesterov=False, ns_steps=5, rms_rate=None,
                   normalize_weights=True, weight_decay=None)
  optimizer.build([kernel])
  assert optimizer.adam_velocities[0] is None  # Muon's path, not the AdamW fallback.
  normalized = kernel.numpy() * 4.0 / np.linalg.norm(kernel.numpy())
  optimizer.apply_gradients([(gradient, kernel)])
  update = ((normalized - kernel.numpy()) / 0.1).reshape(72, 16)
  # Newton-Schulz's quintic lands the singular values near 1, not on it (Jordan: 0.7-1.2).
  singular_values = np.linalg.svd(update, compute_uv=False)
  assert np.all((0.6 < singular_values) & (singular_values < 1.3))
  u, _, vt = np.linalg.svd(gradient.numpy().reshape(72, 16), full_matrices=False)
  cosine = np.sum(update * (u @ vt)) / (np.linalg.norm(update) * np.linalg.norm(u @ vt))
  assert cosine > 0.95


@pytest.mark.parametrize("strategy", ["default", "mirrored"])
def test_two_accumulated_steps_are_one_step_of_twice_the_batch(strategy, make_config):
  # No augmentation, constant rate: steps 1-2 of batch 16 hold the examples of step 1
  # of batch 32 (the epoch's permutation, sliced in order).
  weights = {}
  for accum, batch in ((2, 16), (1, 32)):
    config = make_config(model="baseline_cnn", image_size=32, augment="", momentum=0.9,
                         weight_decay=0.0, batch_size=batch, grad_accum_steps=accum)
    split = data.load(config)
    config = config.resolve(len(split.train), len(split.class_names))
    state, runner = make_runner(config, distribute.make_strategy(strategy))
    if accum == 1:
      state.model.set_weights(weights["start"])
    else:
      weights["start"] = state.model.get_weights()
    batches = iter(runner.strategy.distribute_datasets_from_function(
        lambda ctx, c=config: data.train_dataset(split.train, c, 0, ctx)))
    if accum == 2:
      runner.train_loop(batches, tf.constant(1))  # Half an update: nothing moves yet.
      for a, b in zip(weights["start"], state.model.get_weights()):
        np.testing.assert_array_equal(a, b)
      runner.train_loop(batches, tf.constant(1))
    else:
      runner.train_loop(batches, tf.constant(1))
    assert int(state.optimizer.iterations.numpy()) == 1
    weights[accum] = state.model.get_weights()
  assert any(not np.allclose(a, b) for a, b in zip(weights["start"], weights[1]))
  for a, b in zip(weights[1], weights[2]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_loss_scale_halved_inside_an_update_leaves_the_update_as_it_was(make_config):
  # mixed_float16: an overflow between the steps of one accumulated update halves the
  # scale; the gradients summed before it must not count twice as much as those after.
  config = make_config(model="baseline_cnn", image_size=32, augment="", momentum=0.0,
                       weight_decay=0.0, batch_size=16, grad_accum_steps=2,
                       precision="mixed_float16")
  split = data.load(config)
  config = config.resolve(len(split.train), len(split.class_names))
  updates = []
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    for halve in (False, True):
      state, runner = make_runner(config)
      if halve:
        state.model.set_weights(start)
      else:
        start = state.model.get_weights()
      batches = iter(runner.strategy.distribute_datasets_from_function(
          lambda ctx: data.train_dataset(split.train, config, 0, ctx)))
      runner.train_loop(batches, tf.constant(1))
      if halve:
        optim.lower_loss_scale(state.optimizer)
      runner.train_loop(batches, tf.constant(1))
      assert int(state.optimizer.iterations.numpy()) == 1
      # Not under the name of older checkpoints, whose sums included the scale.
      assert "accumulation_unscaled" in state.checkpointed()
      updates.append([w - s for w, s in zip(state.model.get_weights(), start)])
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert any(np.any(u != 0) for u in updates[0])
  for a, b in zip(*updates):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)


def test_accumulated_updates_end_at_fixed_steps_whichever_steps_were_skipped(make_config):
  # Step 1 is non-finite: the first update is still applied at step 2 (from step 2's
  # gradients alone), the second at step 4; an update never spans a phase's end.
  config = make_config(grad_accum_steps=2, inject_nan_step=1, train_steps=4).resolve(192, 4)
  state, runner = make_runner(config)
  batches = iter(runner.strategy.distribute_datasets_from_function(
      lambda ctx: data.train_dataset(data.load(config).train, config, 0, ctx)))
  iterations = []
  for _ in range(4):
    runner.train_loop(batches, tf.constant(1))
    iterations.append(int(state.optimizer.iterations.numpy()))
  assert iterations == [0, 1, 1, 2] and int(state.skipped.numpy()) == 1
  assert int(state.accumulation.count.numpy()) == 0
