"""Per-variable rules: which optimizer, learning-rate scale, decay and training span."""

import glob
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from research import data, distribute, loop, optim
from research.config import ConfigError
from tests.conftest import make_runner


def _state(make_config, strategy="default", **overrides):
  config = make_config(**overrides)
  split = data.load(config)
  config = config.resolve(len(split.train), len(split.class_names))
  state, runner = make_runner(config, distribute.make_strategy(strategy))
  batches = iter(runner.strategy.distribute_datasets_from_function(
      lambda ctx: data.train_dataset(split.train, config, 0, ctx)))
  return state, runner, batches


def test_first_matching_rule_wins(make_config):
  config = make_config(param_rules="kernels(rank=4, lr_scale=2.0),batchnorm(lr_scale=3),"
                                   "batchnorm(lr_scale=64.0)").resolve(100, 10)
  state, _ = make_runner(config)
  by_name = {}
  for variable, rule in zip(state.model.trainable_variables, state.rules):
    by_name.setdefault((variable.name, len(variable.shape)), set()).add(rule.lr_scale)
  assert by_name[("kernel", 4)] == {2.0}
  assert by_name[("gamma", 1)] == {3.0}      # The first batchnorm rule, not the second.
  assert by_name[("kernel", 2)] == {1.0}     # The dense head: no rule.
  assert optim.rule_specs(config)[-1] == "batchnorm(lr_scale=64.0)"


@pytest.mark.parametrize("strategy", ["default", "mirrored"])
def test_conv_kernels_take_their_own_optimizer(strategy, make_config):
  state, runner, batches = _state(
      make_config, strategy, optimizer="sgd", momentum=0.9, learning_rate=0.05,
      param_rules="kernels(rank=4, optimizer='adam')")
  first, second = state.optimizer.optimizers
  assert type(first).__name__ == "SGD" and type(second).__name__ == "Adam"
  conv = [v for v in state.model.trainable_variables if len(v.shape) == 4]
  before = [v.numpy() for v in state.model.trainable_variables]
  runner.train_loop(batches, tf.constant(2))
  assert int(first.iterations.numpy()) == int(second.iterations.numpy()) == 2
  # Adam's first step moves every weight by about the learning rate; SGD's does not.
  for v, old in zip(state.model.trainable_variables, before):
    if any(v is c for c in conv):
      assert np.max(np.abs(v.numpy() - old)) == pytest.approx(0.1, rel=0.05)


def test_a_rule_with_its_own_learning_rate_gets_its_own_optimizer(make_config):
  state, runner, batches = _state(
      make_config, optimizer="sgd", momentum=0.0, learning_rate=0.05, weight_decay=0.0,
      param_rules="kernels(rank=4, learning_rate=0.5)")
  first, second = state.optimizer.optimizers
  assert type(first).__name__ == type(second).__name__ == "SGD"
  assert [float(o.learning_rate) for o in (first, second)] == pytest.approx([0.05, 0.5])
  conv = [v for v in state.model.trainable_variables if len(v.shape) == 4]
  assert {id(v) for v in conv} == state.optimizer._variables_of[1]
  runner.train_loop(batches, tf.constant(1))
  assert int(second.iterations.numpy()) == 1


def test_a_rule_shorter_than_a_step_trains_one_step_then_stays(make_config):
  # 6 steps an epoch: 0.05 epochs is 0.3 steps, which must not round to "no limit".
  state, runner, batches = _state(make_config,
                                  param_rules="pattern(regex='logits', epochs=0.05)")
  head = [v for v in state.model.trainable_variables if "logits" in v.path]
  start = [v.numpy() for v in head]
  runner.train_loop(batches, tf.constant(1))
  after_one = [v.numpy() for v in head]
  assert not any(np.array_equal(a, b) for a, b in zip(start, after_one))
  runner.train_loop(batches, tf.constant(2))
  for a, b in zip(after_one, head):
    np.testing.assert_array_equal(a, b.numpy())

def test_several_optimizers_checkpoint_and_resume(make_config, caplog):
  config = make_config(param_rules="kernels(rank=4, optimizer='adam')", train_steps=6,
                       checkpoint_every=3, deterministic=True)
  whole = loop.train(config)
  # Back to the checkpoint of step 3, as if stopped there: both optimizers' slots and
  # step counts come from it (one run fewer than stopping a second run at step 3).
  directory = os.path.join(config.model_dir, "checkpoints")
  for path in glob.glob(f"{directory}/ckpt-6.*") + [f"{directory}/checkpoint"]:
    os.remove(path)
  caplog.set_level(logging.INFO)
  resumed = loop.train(config)
  assert "resumed at step 3 from" in caplog.text
  assert resumed.final_eval["loss"] == whole.final_eval["loss"]


def test_a_rule_without_decay_leaves_its_variables_undecayed(make_config):
  state, _, _ = _state(make_config, optimizer="sgd", momentum=0.0,
                                  weight_decay=0.5, learning_rate=0.1,
                                  param_rules="pattern(regex='logits', weight_decay=False)")
  excluded = [v for v in state.model.trainable_variables if "logits" in v.path]
  assert excluded and all(state.optimizer._use_weight_decay(v) is False for v in excluded)
  others = [v for v in state.model.trainable_variables
            if v.name == "kernel" and "logits" not in v.path]
  assert others and all(state.optimizer._use_weight_decay(v) for v in others)
  offsets = [v for v in state.model.trainable_variables if v.name in ("beta", "bias")]
  assert offsets and not any(state.optimizer._use_weight_decay(v) for v in offsets)


def test_a_rule_with_decay_decays_batchnorm_offsets(make_config):
  state, _, _ = _state(make_config, optimizer="sgd", weight_decay=0.5,
                       param_rules="batchnorm(lr_scale=64, weight_decay=True)")
  decayed = {v.name for v in state.model.trainable_variables
             if state.optimizer._use_weight_decay(v)}
  assert decayed == {"kernel", "gamma", "beta"}


@pytest.mark.parametrize("rules, message", [
    ("pattern(regex='no_such_layer')", "pattern(regex='no_such_layer') matches no trainable "
                                       "variable of --model=resnet8"),
    ("kernels(optimizer='nope')", "unknown optimizer 'nope'"),
    ("batchnorm(lr_scale=0)", "lr_scale must be > 0"),
    ("kernels(learning_rate=-0.1)", "learning_rate must be >= 0"),
    ("whitening_bias(epochs=0, decay=True)", "decay=True needs epochs > 0"),
    ("pattern(regex='logits', epochs=-1)", "epochs must be >= 0"),
    ("batchnorm(weight_decay='yes')", "weight_decay must be True or False, got 'yes'"),
    ("bias_only", "unknown parameter rule 'bias_only'"),
    ("kernels(optimizer='muon(ns_steps=0)')", "optimizer muon(ns_steps=0): needs ns_steps >= 1"),
    ("kernels(optimizer='lion(beta_2=5)')", "optimizer lion(beta_2=5): beta_2 must be in [0, 1)"),
])
def test_bad_rules_are_one_clear_error(rules, message, make_config):
  with pytest.raises(ConfigError, match=None) as error:
    config = make_config(param_rules=rules)
    loop.train(config)
  assert message in str(error.value)
