"""Reads a run's TensorBoard event files back (RUN/train, RUN/eval), for plots and tests.

TF2 `tf.summary.scalar` stores scalars as tensors tagged with the scalars plugin, so
scalars are read through `Tensors` and `tf.make_ndarray`.
"""

import os

import numpy as np
from tensorboard.backend.event_processing import event_accumulator
import tensorflow as tf

SPLITS = ("train", "eval")
_EVERYTHING = {kind: 0 for kind in (event_accumulator.SCALARS, event_accumulator.TENSORS,
                                    event_accumulator.IMAGES, event_accumulator.HISTOGRAMS,
                                    event_accumulator.GRAPH)}


def accumulator(log_dir):
  """A loaded EventAccumulator of every event in `log_dir` (no sampling)."""
  acc = event_accumulator.EventAccumulator(log_dir, size_guidance=_EVERYTHING)
  return acc.Reload()


def scalars(log_dir):
  """{tag: (steps int64 [N], values float64 [N])} of every scalar in `log_dir`, by step."""
  acc = accumulator(log_dir)
  try:
    tags = acc.PluginTagToContent("scalars")
  except KeyError:  # Nothing logged yet (a graph at most): a run stopped before its first log.
    return {}
  out = {}
  for tag in tags:
    events = _by_step(acc, tag)
    out[tag] = (np.array([step for step, _, _ in events], np.int64),
                np.array([value for _, _, value in events]))
  return out


def timed_scalar(log_dir, tag):
  """[(step, wall time in seconds since the epoch, value)] of scalar `tag`, by step."""
  acc = accumulator(log_dir)
  return _by_step(acc, tag) if tag in acc.Tags()[event_accumulator.TENSORS] else []


def _by_step(acc, tag):
  return [(e.step, e.wall_time, float(tf.make_ndarray(e.tensor_proto)))
          for e in sorted(acc.Tensors(tag), key=lambda e: e.step)]


def run_scalars(run_dir):
  """{split: {tag: (steps, values)}} for the splits the run has written."""
  return {split: scalars(os.path.join(run_dir, split)) for split in SPLITS
          if os.path.isdir(os.path.join(run_dir, split))}
