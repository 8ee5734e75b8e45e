"""Checkpoints in the model dir: save, resume with fallback, refuse foreign dirs."""

import os

from absl import logging
import tensorflow as tf

from research.config import Config, ConfigError


class Checkpointer:
  """A tf.train.CheckpointManager over `trackables`, restoring the newest good one."""

  def __init__(self, directory, max_to_keep, **trackables):
    self.checkpoint = tf.train.Checkpoint(**trackables)
    self.manager = tf.train.CheckpointManager(self.checkpoint, directory,
                                              max_to_keep=max_to_keep)

  def restore(self):
    """Restores the newest readable checkpoint; returns its path or None if none exist.

    A corrupt newest checkpoint falls back to the one before, saying so; if none
    can be read the run stops rather than silently starting again from step 0.
    """
    failures = []
    for path in reversed(self.manager.checkpoints):
      try:
        self.checkpoint.restore(path).assert_existing_objects_matched()
      except (tf.errors.OpError, ValueError, AssertionError) as e:
        logging.warning("checkpoint %s is unreadable (%s); trying the one before", path,
                        str(e).splitlines()[0])
        failures.append(path)
        continue
      if failures:
        logging.warning("resumed from %s after skipping %s", path, ", ".join(failures))
      return path
    if failures:
      raise RuntimeError(f"no readable checkpoint in {self.manager.directory}: "
                         + ", ".join(failures))
    return None

  def save(self, step):
    return self.manager.save(checkpoint_number=step)


def check_model_dir(config):
  """Refuses a model dir whose saved config shaped a different checkpoint."""
  path = os.path.join(config.model_dir, "config.json")
  if not os.path.exists(path):
    return
  differences = config.checkpoint_differences(Config.load(path))
  if differences:
    raise ConfigError(f"model dir {config.model_dir!r} holds a different run ("
                      + "; ".join(differences) + "); use another --model_dir")
