"""Checkpoints in the model dir: save, and resume from the newest readable one."""

import glob
import os
import re
import shutil

from absl import logging
import numpy as np
import tensorflow as tf

from research.config import reason


class CheckpointError(Exception):
  """No checkpoint can be read, or one cannot be written; the message says what is kept."""


class Checkpointer:
  """A tf.train.CheckpointManager over `trackables`, restoring the newest good one.

  A multi-worker run's other workers take part in every save (it is collective) but
  write to a `scratch` directory of their own, removed after each save, and restore
  from the chief's `directory`. The trackables named in `OPTIONAL` may be missing from
  a checkpoint written before they were saved: it restores without them, saying so."""

  OPTIONAL = {"random": "the model's random generators (Dropout's masks), so the "
                        "resumed run's masks differ from an uninterrupted run's",
              "rollbacks": "the count of --on_nan=rollback's reseedings, so the resumed "
                           "run's data follow the first seed",
              "accumulation_unscaled": "mixed_float16's accumulated gradients without the "
                                       "loss scale, so the update in progress averages "
                                       "only its steps after the resume",
              "train_metrics": "the training metrics' sums since the last log (or "
                               "--metrics changed since), so the first log after the "
                               "resume averages only its steps after it",
              "probes": "the probes' sums since the last log (or --probes changed "
                        "since), so the first log after the resume averages only its "
                        "steps after it"}

  def __init__(self, directory, max_to_keep, scratch=None, **trackables):
    self.trackables, self.directory, self.scratch = trackables, directory, scratch
    self.checkpoint = tf.train.Checkpoint(**trackables)
    self.manager = tf.train.CheckpointManager(self.checkpoint, scratch or directory,
                                              max_to_keep=max_to_keep)

  def restore(self):
    """Restores the newest readable checkpoint; returns its path or None if none exist.

    A corrupt newest checkpoint falls back to the one before, saying so; if none
    can be read the run stops rather than silently starting again from step 0.
    """
    failures = []
    for path in self.candidates():
      try:
        self.checkpoint_of(path).restore(path).assert_existing_objects_matched()
      except Exception as e:  # pylint: disable=broad-except  (torn files fail in many ways)
        logging.warning("checkpoint %s is unreadable (%s); trying the one before", path,
                        reason(e))
        failures.append(f"{path} ({reason(e)})")
        continue
      if failures:
        logging.warning("resumed from %s after skipping %s", path, ", ".join(failures))
      return path
    if failures:
      raise CheckpointError(f"no readable checkpoint in {self.directory}: "
                            + ", ".join(failures) + "; move them away to start again "
                            "from step 0")
    return None

  def checkpoint_of(self, path):
    """The checkpoint object that reads `path`: without the optional trackables it
    lacks."""
    names = [name for name, _ in tf.train.list_variables(path)]
    saved = {name.split("/")[0] for name in names}
    missing = [name for name in self.OPTIONAL if name in self.trackables
               and name not in saved]
    for sums in ("train_metrics", "probes"):  # This run's --metrics or --probes may differ.
      kept = {name.split("/")[1] for name in names if name.startswith(f"{sums}/")}
      if sums in saved and sums in self.trackables and kept != set(self.trackables[sums]):
        missing.append(sums)
    if not missing:
      return self.checkpoint
    for name in missing:
      logging.warning("checkpoint %s predates saving %s", path, self.OPTIONAL[name])
    return tf.train.Checkpoint(**{name: trackable for name, trackable
                                  in self.trackables.items() if name not in missing})

  def candidates(self):
    """Checkpoint prefixes, newest first: the manager's list, plus any other
    complete-looking `ckpt-N` in the directory (its state file may be lost)."""
    listed = set() if self.scratch else set(self.manager.checkpoints)
    found = {p[:-len(".index")] for p in
             glob.glob(os.path.join(self.directory, "ckpt-*.index"))}
    number = lambda p: int(re.search(r"ckpt-(\d+)$", p).group(1))
    return sorted(listed | found, key=number, reverse=True)

  def save(self, step):
    """Saves `step`, or raises CheckpointError saying what is kept and what is needed,
    leaving no partial files of `step` behind (a full disk, a vanished directory)."""
    try:
      path = self.manager.save(checkpoint_number=step)
      if self.scratch:
        shutil.rmtree(self.scratch, ignore_errors=True)
      return path
    except (tf.errors.OpError, OSError) as e:
      directory = self.manager.directory
      for path in glob.glob(os.path.join(directory, f"ckpt-{step}[._]*")):
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
      kept = self.manager.latest_checkpoint
      cause = getattr(e, "message", None) or e.strerror or str(e)
      raise CheckpointError(
          f"saving the checkpoint of step {step} in {directory} failed: "
          f"{cause.splitlines()[0]} (a checkpoint takes about {megabytes(self.size())}, "
          f"{megabytes(free_bytes(directory))} are free); "
          + (f"{os.path.basename(kept)} is kept: free some space and rerun the same "
             "command to resume from it" if kept else "no checkpoint is kept")) from None

  def size(self):
    """Bytes of the variables a checkpoint holds."""
    variables = {}
    for trackable in self.trackables.values():
      listed = (list(trackable.values()) if isinstance(trackable, dict) else
                trackable if isinstance(trackable, list) else None)
      for v in listed or getattr(trackable, "variables", [trackable]):
        variables[id(v)] = int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size
    return sum(variables.values())


def free_bytes(directory):
  return shutil.disk_usage(directory).free


def megabytes(num_bytes):
  return f"{num_bytes / 2**20:.1f} MB"

