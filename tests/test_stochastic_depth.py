"""research/ideas/stochastic_depth.py: residual branches dropped at a rate that follows
the run, read from the step context."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from research import context, data, loop
from research.ideas.stochastic_depth import DropPath
from tests.conftest import make_runner


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
  config = make_config(model="resnet_drop_path(depth=8, rate=0.5)", train_steps=6, checkpoint_every=6,
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
  config = make_config(model="resnet_drop_path(depth=8, rate=0.5)")
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
