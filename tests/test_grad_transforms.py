"""Gradient transforms: --grad_transforms, a rule's grad=, and AGC (research/ideas/agc.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from research import data, distribute, gradients, optim
from research.config import ConfigError
from research.ideas import agc  # noqa: F401  (registers the transform)
from tests.conftest import make_runner


def _agc_numpy(g, w, clipping, eps):
  axes = tuple(range(g.ndim - 1)) if g.ndim > 1 else None
  norm = lambda x: np.sqrt(np.sum(x * x, axis=axes, keepdims=True))
  most = clipping * np.maximum(norm(w), eps)
  return np.where(norm(g) > most, g * most / np.maximum(norm(g), 1e-6), g)


def test_agc_clips_each_unit_as_numpy_does():
  rng = np.random.default_rng(0)
  shapes = [(3, 3, 4, 8), (6, 5), (5,)]
  weights = [rng.normal(size=s).astype(np.float32) for s in shapes]
  # Some units far above the limit, some below it (left as they are).
  grads = [rng.normal(size=s).astype(np.float32) * rng.choice([1e-4, 1.0], s[-1:])
           for s in shapes]
  transform = gradients.GRAD_TRANSFORMS.build("agc(clipping=0.05)")
  out = transform([tf.constant(g) for g in grads], [tf.Variable(w) for w in weights])
  for o, g, w in zip(out, grads, weights):
    expected = _agc_numpy(g, w, 0.05, 1e-3)
    assert not np.allclose(expected, g)
    assert np.any(expected == g) or g.ndim == 1  # A vector is one unit.
    np.testing.assert_allclose(o.numpy(), expected, rtol=1e-5)


def _one_step(config, strategy="default", start=None):
  """(start weights, weights after one step, the global gradient of that step's batch)."""
  split = data.load(config)
  config = config.resolve(len(split.train), len(split.class_names))
  state, runner = make_runner(config, distribute.make_strategy(strategy))
  if start is not None:
    state.model.set_weights(start)
  start = state.model.get_weights()
  batch = next(iter(data.train_dataset(split.train, config, 0, None)))
  grads = [g.numpy() for g in runner.gradients(batch)]
  batches = iter(runner.strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors(batch).repeat()))
  runner.train_loop(batches, tf.constant(1))
  return start, state.model.get_weights(), grads, state


def _sgd(make_config, **overrides):
  # No BatchNorm (per-replica statistics), plain SGD at a constant rate.
  return make_config(model="baseline_cnn", image_size=32, augment="", momentum=0.0,
                     weight_decay=0.0, learning_rate=0.1, **overrides)


@pytest.mark.parametrize("strategy", ["default", "mirrored"])
def test_clip_norm_clips_the_global_gradient(strategy, make_config):
  config = _sgd(make_config, grad_transforms="clip_norm(max=0.05)")
  start, after, grads, _ = _one_step(config, strategy)
  norm = np.sqrt(sum(np.sum(g * g) for g in grads))
  assert norm > 0.1  # The clip is active: not each replica's half-batch norm either.
  for w0, w1, g in zip(start, after, grads):
    np.testing.assert_allclose(w1 - w0, -0.1 * g * (0.05 / norm), rtol=1e-4, atol=1e-7)


def test_a_rule_transforms_only_its_own_variables(make_config):
  plain = _sgd(make_config)
  start, unclipped, grads, state = _one_step(plain)
  ruled = plain.replace(param_rules="kernels(rank=4, grad='agc(clipping=0.001)')")
  _, clipped, _, _ = _one_step(ruled, start=start)
  kernels = [i for i, v in enumerate(state.model.trainable_variables)
             if v.name == "kernel" and len(v.shape) == 4]
  assert kernels
  for i, (w0, a, b, g) in enumerate(zip(start, unclipped, clipped, grads)):
    if i in kernels:
      np.testing.assert_allclose(b - w0, -0.1 * _agc_numpy(g, w0, 0.001, 1e-3),
                                 rtol=1e-4, atol=1e-7)
      assert not np.allclose(a, b)
    else:
      np.testing.assert_array_equal(a, b)


def test_mixed_float16_loss_scaling_works_with_a_transform(make_config):
  config = _sgd(make_config, precision="mixed_float16", grad_transforms="clip_norm(max=0.05)")
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    start, after, grads, state = _one_step(config)
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert optim.loss_scale(state.optimizer) > 1.0 and int(state.skipped.numpy()) == 0
  norm = np.sqrt(sum(np.sum(g * g) for g in grads))  # Without the loss scale.
  for w0, w1, g in zip(start, after, grads):
    np.testing.assert_allclose(w1 - w0, -0.1 * g * (0.05 / norm), rtol=2e-3, atol=1e-6)


def test_no_transform_adds_no_stage(make_config):
  config = _sgd(make_config).resolve(192, 4)
  _, runner = make_runner(config)
  assert runner.spec.grad_transforms is None
  assert [s.__name__ for s in runner.spec.update_path] == ["apply_gradients", "keep_or_undo"]


@pytest.mark.parametrize("overrides, message", [
    (dict(grad_transforms="clip_nrom"), "--grad_transforms: unknown gradient transform "
     "'clip_nrom' \\(did you mean 'clip_norm'"),
    (dict(grad_transforms="clip_norm(max=0)"), "--grad_transforms: clip_norm: max must be > 0"),
    (dict(param_rules="kernels(grad='agc(clipping=-1.0)')"), "--param_rules: agc: clipping"),
    (dict(param_rules="kernels(grad='agc(clip=1.0)')"), "--param_rules: gradient transform "
     "'agc' has no parameter 'clip'"),
])
def test_bad_transforms_are_refused_before_any_data(overrides, message, make_config):
  with pytest.raises(ConfigError, match=message):
    make_config(**overrides)
