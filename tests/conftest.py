"""Shared test set-up: two logical CPU devices, so MirroredStrategy runs in-process."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pytest  # noqa: E402

from research import distribute  # noqa: E402
from research.config import Config  # noqa: E402

distribute.split_cpu(2)  # Before anything initializes TensorFlow's devices.


def tiny_config(tmp_path, **overrides):
  """A few-second run on generated data; override anything."""
  values = dict(dataset="synthetic", synthetic_examples=256, val_split=0.25, image_size=16,
                model="resnet8", batch_size=32, train_steps=6, steps_per_loop=3,
                log_every=3, eval_every=6, checkpoint_every=6, precision="float32",
                learning_rate=0.05, schedule="constant", augment="crop,flip",
                model_dir=str(tmp_path / "run"))
  values.update(overrides)
  return Config(**values).validate()


@pytest.fixture
def make_config(tmp_path):
  return lambda **overrides: tiny_config(tmp_path, **overrides)
