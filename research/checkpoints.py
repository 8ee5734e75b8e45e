"""Checkpoints in the model dir: save, and resume from the newest readable one."""

import glob
import os
import re

from absl import logging
import tensorflow as tf



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
    for path in self.candidates():
      try:
        self.checkpoint.restore(path).assert_existing_objects_matched()
      except Exception as e:  # pylint: disable=broad-except  (torn files fail in many ways)
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        logging.warning("checkpoint %s is unreadable (%s); trying the one before", path,
                        reason)
        failures.append(f"{path} ({reason})")
        continue
      if failures:
        logging.warning("resumed from %s after skipping %s", path, ", ".join(failures))
      return path
    if failures:
      raise RuntimeError(f"no readable checkpoint in {self.manager.directory}: "
                         + ", ".join(failures))
    return None

  def candidates(self):
    """Checkpoint prefixes, newest first: the manager's list, plus any other
    complete-looking `ckpt-N` in the directory (its state file may be lost)."""
    listed = set(self.manager.checkpoints)
    found = {p[:-len(".index")] for p in
             glob.glob(os.path.join(self.manager.directory, "ckpt-*.index"))}
    number = lambda p: int(re.search(r"ckpt-(\d+)$", p).group(1))
    return sorted(listed | found, key=number, reverse=True)

  def save(self, step):
    return self.manager.save(checkpoint_number=step)

