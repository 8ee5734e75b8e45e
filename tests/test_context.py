"""The step context: compiled code and the input pipeline know where training is."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from research import augment, context, data, distribute, loop, losses
from research.models.drop_path import DropPath
from research.sources.datasets import synthetic
from tests.conftest import make_runner

SEEN = {}  # run name -> tf.Variable of the steps a loss saw, by step


@losses.LOSSES.register("test_records_the_step")
def records_the_step(name="default"):
  """Cross-entropy that writes the step context's step and fraction at its step."""
  base = losses.LOSSES.build("cross_entropy")

  def loss(outputs, batch):
    where = context.current()
    if where is None:  # Evaluation.
      return base(outputs, batch)
    seen = SEEN[name]
    index = tf.cast(where.step, tf.int32)
    seen.scatter_nd_update([[index, 0]], [tf.cast(where.step, tf.float32)])
    seen.scatter_nd_update([[index, 1]], [where.fraction])
    seen.scatter_nd_update([[index, 2]], [where.epoch])
    return base(outputs, batch)
  return loss


@pytest.mark.parametrize("strategy", ["default", "mirrored"])
def test_the_step_inside_tf_range_is_each_iterations_own(strategy, make_config):
  SEEN[strategy] = tf.Variable(tf.fill([12, 3], -1.0), trainable=False)
  config = make_config(train_steps=12, steps_per_loop=12, log_every=12, eval_every=12,
                       checkpoint_every=12, loss=f"test_records_the_step(name='{strategy}')")
  loop.train(config, distribute.make_strategy(strategy))
  seen = SEEN[strategy].numpy()
  steps, steps_per_epoch = np.arange(12), len(data.load(config).train) // 32
  np.testing.assert_array_equal(seen[:, 0], steps)  # One call ran 11, after step 1's.
  np.testing.assert_allclose(seen[:, 1], steps / 12, rtol=1e-6)
  np.testing.assert_allclose(seen[:, 2], steps / steps_per_epoch, rtol=1e-6)


def test_outside_training_there_is_no_context():
  assert context.current() is None
  where = context.StepContext(lambda: tf.constant(5, tf.int64), 10, 4)
  with context.active(where):
    assert context.current() is where
    assert float(where.fraction) == 0.5 and float(where.epoch) == 1.25
  assert context.current() is None


@augment.AUGMENTATIONS.register("test_fraction_as_image")
def fraction_as_image():
  """Every pixel set to the batch's fraction of the run."""
  return lambda batch, seed, ctx: {
      **batch, "image": tf.zeros_like(batch["image"]) + context.current().fraction}


def test_an_augmentation_sees_its_own_batchs_step(make_config):
  config = make_config(augment="test_fraction_as_image", train_steps=12).resolve(192, 4)
  split, _ = synthetic(192, 16, 4)
  batches = data.train_dataset(split, config, 3, tf.distribute.InputContext())
  fractions = [float(b["image"][0, 0, 0, 0]) for b in batches.take(4)]
  np.testing.assert_allclose(fractions, np.arange(3, 7) / 12, rtol=1e-6)


def test_drop_path_follows_the_run_and_is_the_identity_outside_it():
  layer = DropPath(0.8, seed=1)
  x = tf.ones([4000, 1, 1, 1])
  np.testing.assert_array_equal(layer(x, training=True), x)  # No run: no drop.
  for step, keep in ((0, 1.0), (50, 0.6)):  # The rate is 0.8 x the fraction done.
    with context.active(context.StepContext(lambda: tf.constant(step), 100, 10)):
      y = layer(x, training=True).numpy().ravel()
      np.testing.assert_array_equal(layer(x, training=False), x)
    np.testing.assert_allclose(y[y > 0], 1 / keep, rtol=1e-6)
    assert abs(np.mean(y > 0) - keep) < 0.03
  restored = DropPath.from_config(layer.get_config())
  assert restored.rate == 0.8


def test_resnet_drop_path_resumes_exactly(make_config):
  config = make_config(model="resnet8(drop_path=0.5)", train_steps=6, checkpoint_every=6,
                       eval_every=6, deterministic=True)
  loop.train(config.replace(model_dir=config.model_dir + "_whole"))
  whole = keras.models.load_model(config.model_dir + "_whole/model.keras").get_weights()
  with pytest.raises(loop.Preempted):
    loop.train(config.replace(hooks="test_sigterm_at(step=3)"))
  loop.train(config)
  resumed = keras.models.load_model(config.model_dir + "/model.keras")
  assert sum(isinstance(l, DropPath) for l in resumed.layers) == 3
  for a, b in zip(whole, resumed.get_weights()):
    np.testing.assert_array_equal(a, b)


def test_drop_path_draws_inside_the_compiled_step(make_config):
  """Its generator advances only where the step context reaches it: in training."""
  config = make_config(model="resnet8(drop_path=0.5)")
  loaded = data.load(config)
  split, config = loaded.train, config.resolve(len(loaded.train), len(loaded.class_names))
  state, runner = make_runner(config)
  layers = [l for l in state.model.layers if isinstance(l, DropPath)]
  before = [l.seed_generator.state.numpy() for l in layers]
  batches = iter(data.train_dataset(split, config, 0, tf.distribute.InputContext()))
  runner.train_loop(batches, tf.constant(4))
  runner.evaluate(loaded.eval, 32)
  for layer, start in zip(layers, before):
    assert layer.seed_generator.state.numpy()[1] - start[1] == 4  # One draw a step.
