"""TensorBoard writers and the console progress line."""

import os
import time

import numpy as np
import tensorflow as tf


class Writers:
  """One summary writer per split (train, eval) under the model dir."""

  def __init__(self, model_dir, enabled=True):
    make = (lambda name: tf.summary.create_file_writer(os.path.join(model_dir, name))
            if enabled else tf.summary.create_noop_writer())
    self.train, self.eval = make("train"), make("eval")

  def scalars(self, writer, step, values):
    """Each number of `values` as a scalar (arrays, such as a confusion matrix, are
    for the hooks to draw)."""
    with writer.as_default(step=step):
      for name, value in scalar_items(values):
        tf.summary.scalar(name, value)

  def text(self, name, value, step=0):
    with self.train.as_default(step=step):
      tf.summary.text(name, value)

  def flush(self):
    self.train.flush()
    self.eval.flush()


class Progress:
  """`step 1200/35000 (3.4%) ep 3.1 | 2345 img/s | ETA 12m03s | loss ...` lines."""

  def __init__(self, total_steps, start_step, steps_per_epoch, work=None):
    """`work(first, last)`: the cost of steps [first, last) in full steps (default: their
    count), so that the cheap steps of a low-res phase do not make the ETA short."""
    self.total, self.steps_per_epoch = total_steps, steps_per_epoch
    self.work = work or (lambda first, last: last - first)
    self.restart(start_step)

  def restart(self, step):
    """Measures the pace from `step` on (after compiling, which is not the pace)."""
    self.start, self.started = step, time.perf_counter()

  def line(self, step, images_per_second, metrics=None):
    """`images_per_second` None: not measured yet (only the compiling call has run);
    `metrics` None: a line between logs, with no metrics."""
    done = self.work(self.start, step)
    eta = (self.work(step, self.total) * (time.perf_counter() - self.started) / done
           if done else float("nan"))
    speed = "? img/s" if images_per_second is None else f"{images_per_second:.0f} img/s"
    return (f"step {step}/{self.total} ({100 * step / self.total:.1f}%) "
            f"ep {step / self.steps_per_epoch:.2f} | {speed} | "
            f"ETA {format_seconds(eta)}" + (f" | {format_metrics(metrics)}" if metrics else ""))


def scalar_items(values):
  """(name, number) of `values` whose value is one number (not the example count)."""
  return [(k, v) for k, v in values.items()
          if k != "examples" and np.ndim(v) == 0]


def format_metrics(metrics):
  """`loss 0.1234 accuracy 0.9876 ...`: every scalar metric but the example count."""
  return " ".join(f"{k} {v:.4f}" for k, v in scalar_items(metrics))


def format_seconds(seconds):
  if seconds != seconds:  # NaN
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def truncate_events(model_dir, step):
  """Drops events after `step` from the run's event files, before a resume.

  A run killed after its last checkpoint wrote summaries for steps it will redo;
  without this, TensorBoard would show those steps twice.
  """
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  for split in ("train", "eval"):
    directory = os.path.join(model_dir, split)
    if not os.path.isdir(directory):
      continue
    for name in sorted(os.listdir(directory)):
      if "tfevents" not in name:
        continue
      path = os.path.join(directory, name)
      records = []
      try:  # A killed writer may leave a torn last record: keep what precedes it.
        for record in tf.data.TFRecordDataset(path):
          records.append(record.numpy())
      except tf.errors.DataLossError:
        pass
      kept = [r for r in records if event_pb2.Event.FromString(r).step <= step]
      if len(kept) < len(records) or os.path.getsize(path) > sum(len(r) + 16 for r in records):
        with tf.io.TFRecordWriter(path + ".tmp") as writer:
          for record in kept:
            writer.write(record)
        os.replace(path + ".tmp", path)
