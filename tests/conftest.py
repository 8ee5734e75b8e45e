"""Shared test set-up: two logical CPU devices, so MirroredStrategy runs in-process."""

import os
import signal
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pytest  # noqa: E402

from research import startup  # noqa: E402
from research.config import Config  # noqa: E402

# Two logical devices, set before anything starts TensorFlow's devices; its start-up
# chatter (CUDA probes) kept out of the test output, as train.py keeps it out of runs.
startup.import_tensorflow(cpu_devices=2)

from research import hooks, plugins  # noqa: E402
from research.registry import split_list  # noqa: E402


def pytest_addoption(parser):
  # Its own dest: pytest >= 9.1 refuses a second option mapping to `plugins` (`-p`'s).
  parser.addoption("--plugins", dest="research_plugins", default="", help="comma-separated modules or .py files, "
                   "as train.py's --plugins: the tests run on every registered item "
                   "(augmentations, models) run on theirs too")


def pytest_configure(config):
  """Every registered item, ideas and --plugins included, before the tests that run on
  each of them are collected."""
  try:
    plugins.load(split_list(config.getoption("research_plugins")))
  except plugins.PluginError as e:
    raise pytest.UsageError(str(e)) from None


@hooks.HOOKS.register("test_sigterm_at")
def sigterm_at(config, step=5):
  """Sends this process a SIGTERM after `step`, as a preemption would: the run saves a
  checkpoint of that step and stops, its length (and so its schedules) unchanged."""
  del config

  def stop(ctx):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(1)  # The interrupts' watcher thread records it before the loop looks.
  return hooks.Hook(at_steps=(step,), on_step=stop)


def tiny_config(tmp_path, **overrides):
  """A few-second run on generated data; override anything."""
  values = dict(dataset="synthetic", synthetic_examples=256, val_split=0.25, image_size=16,
                model="resnet8", batch_size=32, train_steps=6, steps_per_loop=3,
                log_every=3, eval_every=6, checkpoint_every=6, precision="float32",
                learning_rate=0.05, schedule="constant", augment="crop,flip", hooks="none",
                model_dir=str(tmp_path / "run"))
  values.update(overrides)
  return plugins.validate(Config(**values).validate())


def make_runner(config, strategy=None, class_names=None):
  """(TrainState, steps.Runner) of a resolved config, as loop.train builds them."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from research import steps  # pylint: disable=g-import-not-at-top
  from research.state import TrainState  # pylint: disable=g-import-not-at-top
  plugins.validate(config)
  strategy = strategy or tf.distribute.get_strategy()
  names = class_names or [f"class_{i}" for i in range(config.num_classes)]
  state = TrainState(config, strategy, names)
  return state, steps.Runner(state, steps.StepSpec.from_config(config, state.model, state.rules), strategy)


@pytest.fixture
def make_config(tmp_path):
  return lambda **overrides: tiny_config(tmp_path, **overrides)
