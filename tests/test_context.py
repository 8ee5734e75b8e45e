"""The step context: compiled code and the input pipeline know where training is."""

import numpy as np
import pytest
import tensorflow as tf

from research import augment, context, data, distribute, loop, losses
from research.sources.datasets import synthetic

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
