"""Probes: values computed inside the compiled step after the update, summed exactly."""

import numpy as np
import pytest
import tensorflow as tf

from research import data, distribute, probes
from tests.conftest import make_runner


def _one_step(config, strategy=None):
  """(probe means, weights before, weights after) of one step of a resolved `config`."""
  loaded = data.load(config)
  config = config.resolve(len(loaded.train), len(loaded.class_names))
  strategy = strategy or tf.distribute.get_strategy()
  state, runner = make_runner(config, strategy)
  before = [v.numpy() for v in state.model.trainable_variables]
  batches = iter(strategy.distribute_datasets_from_function(
      lambda ctx: data.train_dataset(loaded.train, config, 0, ctx)))
  runner.train_loop(batches, tf.constant(1))
  after = [v.numpy() for v in state.model.trainable_variables]
  return state.probes.result(), before, after, state


@pytest.mark.parametrize("strategy", ["default", "mirrored"])
def test_norms_are_those_of_the_step_and_its_global_gradient(strategy, make_config):
  # Plain SGD: the update is -lr x the gradient of the global batch, on every replica.
  config = make_config(model="baseline_cnn", image_size=32, optimizer="sgd", momentum=0.0,
                       weight_decay=0.0, learning_rate=0.5,
                       probes="weight_norm,update_norm,grad_norm")
  means, before, after, _ = _one_step(config, distribute.make_strategy(strategy))
  norm = lambda arrays: np.sqrt(sum(float(np.sum(np.square(a))) for a in arrays))
  np.testing.assert_allclose(means["weight_norm"], norm(after), rtol=1e-5)
  np.testing.assert_allclose(means["update_norm"], norm([a - b for a, b in zip(after, before)]),
                             rtol=1e-5)
  np.testing.assert_allclose(means["grad_norm"], means["update_norm"] / 0.5, rtol=1e-4)



def test_a_skipped_step_adds_nothing_and_no_probes_is_none(make_config):
  config = make_config(inject_nan_step=1, probes="update_norm")
  means, before, after, state = _one_step(config)
  assert float(state.probes.steps.read_value()) == 0 and means == {"update_norm": 0.0}
  for a, b in zip(before, after):
    np.testing.assert_array_equal(a, b)
  means, *_ = _one_step(make_config(probes="none"))
  assert means == {}


@probes.PROBES.register("test_wrong_keys")
def wrong_keys():
  """Returns a key it did not declare."""
  return probes.Probe(lambda step: {"something_else": tf.constant(1.0)})


def test_a_probe_returning_undeclared_keys_is_refused(make_config):
  with pytest.raises(ValueError, match=r"probe test_wrong_keys returned \['something_else'\]"):
    _one_step(make_config(probes="test_wrong_keys"))
