import os
import shutil

import numpy as np
import pytest

from research import data, distribute, hooks, loop
from research.config import ConfigError
from tests.conftest import make_runner, tiny_config


def _mirrored():
  return distribute.make_strategy("mirrored")


def test_default_and_mirrored_give_the_same_losses(make_config):
  # No BatchNorm (its batch statistics are per replica) and no dropout.
  config = make_config(model="baseline_cnn", image_size=32, train_steps=9, log_every=3,
                       deterministic=True)
  default = loop.train(config.replace(model_dir=config.model_dir + "_default"))
  mirrored = loop.train(config.replace(model_dir=config.model_dir + "_mirrored"),
                        _mirrored())
  assert _mirrored().num_replicas_in_sync == 2
  for (s1, a), (s2, b) in zip(default.train_history, mirrored.train_history):
    assert s1 == s2
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-3)
  np.testing.assert_allclose(default.final_eval["loss"], mirrored.final_eval["loss"],
                             rtol=1e-3)


@pytest.mark.parametrize("precision", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_each_precision_trains(precision, make_config):
  config = make_config(model="baseline_cnn", image_size=20, precision=precision,
                       train_steps=18, log_every=6, eval_every=18, optimizer="adam",
                       learning_rate=2e-3, weight_decay=0.0)
  history = loop.train(config).train_history
  assert history[-1][1]["loss"] < history[0][1]["loss"]
  assert all(np.isfinite(m["loss"]) for _, m in history)


EVAL_COUNTS = {}


@hooks.HOOKS.register("test_eval_counts")
def _eval_counts(config):
  """At the end of the run, the examples its runner's evaluation counts at other global
  batch sizes, by size, in EVAL_COUNTS: the loop's own evaluations call it so."""
  del config

  def count(ctx):
    for batch in (22, 512):
      EVAL_COUNTS[batch] = ctx.runner.evaluate(ctx.data.eval, batch)["examples"]
  return hooks.Hook(at_end=count)


@pytest.mark.parametrize("strategy", ["default", "mirrored"])
def test_eval_counts_every_example(strategy, make_config):
  # 66 validation examples: the run's 16 does not divide them, 22 does, 512 exceeds
  # them. One run for the three sizes: they evaluate the same 3 trained steps.
  config = make_config(model="resnet8", eval_batch_size=16, train_steps=3, eval_every=3,
                       hooks="test_eval_counts")
  assert len(data.load(config).eval) == 66
  EVAL_COUNTS.clear()
  result = loop.train(config, distribute.make_strategy(strategy))
  assert result.final_eval["examples"] == 66
  assert EVAL_COUNTS == {22: 66, 512: 66}


def test_eval_is_independent_of_batch_size_and_strategy(make_config):
  config = make_config()
  split = data.load(config)
  config = config.resolve(len(split.train), len(split.class_names))
  weights = None
  results = []
  for batch, strategy in ((32, None), (26, None), (6, _mirrored())):
    state, runner = make_runner(config, strategy)
    weights = weights or state.model.get_weights()
    state.model.set_weights(weights)
    results.append(runner.evaluate(split.eval, batch))
  for other in results[1:]:
    assert other["examples"] == results[0]["examples"] == len(split.eval)
    np.testing.assert_allclose(other["accuracy"], results[0]["accuracy"])
    np.testing.assert_allclose(other["loss"], results[0]["loss"], rtol=1e-3)


def test_resume_continues_at_the_saved_step(make_config):
  config = make_config(train_steps=12, checkpoint_every=4, deterministic=True,
                       model="baseline_cnn", image_size=32)
  whole = loop.train(config.replace(model_dir=config.model_dir + "_whole"))
  first = loop.train(config.replace(train_steps=8))
  assert first.step == 8
  resumed = loop.train(config)
  assert [s for s, _ in resumed.train_history] == [9, 12]
  np.testing.assert_allclose(resumed.train_history[-1][1]["loss"],
                             whole.train_history[-1][1]["loss"], rtol=1e-5)
  np.testing.assert_allclose(resumed.final_eval["loss"], whole.final_eval["loss"], rtol=1e-5)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """The config of a finished tiny run, trained once for the tests below."""
  config = tiny_config(tmp_path_factory.mktemp("finished"))
  loop.train(config)
  return config


def test_finished_run_saves_model_config_and_summaries(finished_run):
  names = set(os.listdir(finished_run.model_dir))
  assert {"config.json", "classes.json", "model.keras", "checkpoints", "train",
          "eval"} <= names


def test_foreign_model_dir_is_refused(finished_run, tmp_path):
  config = finished_run.replace(model_dir=str(tmp_path / "run"))  # This test's own copy.
  shutil.copytree(finished_run.model_dir, config.model_dir)
  with pytest.raises(ConfigError, match="model: 'resnet8' in the model dir"):
    loop.train(config.replace(model="baseline_cnn", image_size=32))


def test_batch_that_replicas_cannot_split_is_refused(make_config):
  with pytest.raises(ConfigError, match="does not split over 2 replicas"):
    loop.train(make_config(batch_size=31), _mirrored())


def test_xla_under_mirrored_is_refused_for_replica_averaged_batchnorm(make_config):
  """TensorFlow cannot average a variable over replicas inside a nested XLA function:
  one error, not a traceback from inside BatchNorm. Without BatchNorm it trains."""
  with pytest.raises(ConfigError, match=r"--jit_compile cannot compile this model under "
                                        r"MirroredStrategy: .*moving_mean"):
    loop.train(make_config(jit_compile=True), _mirrored())
  config = make_config(model="baseline_cnn", image_size=32, jit_compile=True, train_steps=2)
  assert loop.train(config, _mirrored()).step == 2


def test_timing_scalars_reach_tensorboard(make_config):
  from research import events
  config = make_config(train_steps=6, log_every=3)
  loop.train(config)
  scalars = events.scalars(os.path.join(config.model_dir, "train"))
  steps, fractions = scalars["input_wait_fraction"]
  assert list(steps) == [3, 6] and all(0.0 <= f <= 1.0 for f in fractions)
  assert (scalars["step_seconds"][1] > 0).all() and (scalars["weight_norm"][1] > 0).all()
  assert (scalars["update_norm"][1] > 0).all()
