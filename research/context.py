"""Where training is, for code that runs inside the compiled step or the input pipeline.

`current()` is the `StepContext` of the step being traced: the global step as a tensor
of the current step inside `tf.range`, the run's length, the epoch and the fraction
done. The train step makes it current while it traces the step kind, the model's
forward pass, the loss and the regularizers; the input pipeline while it traces the
augmentations of a batch (there `step` is that batch's step). Outside training
(evaluation, export, predict) it is None. Read it when traced, in a layer's `call` or
an op's body, not when built, so that any value can follow a schedule by step:

    class ScheduledNoise(keras.layers.Layer):
      def call(self, x, training=False):
        ctx = context.current()
        if not training or ctx is None:
          return x
        return x + keras.random.normal(ops.shape(x), stddev=0.1 * (1 - ctx.fraction))
"""

import contextlib
import contextvars
import dataclasses
from typing import Callable

import tensorflow as tf

_CURRENT = contextvars.ContextVar("research_step_context", default=None)


@dataclasses.dataclass(frozen=True)
class StepContext:
  """The step being run (0 at the first), as a tensor, and the run's length in steps."""
  read_step: Callable   # () -> int64 scalar tensor: the steps done before this one
  total_steps: int      # the run's length
  steps_per_epoch: int  # steps of one epoch

  @property
  def step(self):
    """int64 scalar: the 0-based index of the step being run."""
    return tf.cast(self.read_step(), tf.int64)

  @property
  def fraction(self):
    """float32 scalar in [0, 1): the share of the run done before this step."""
    return tf.cast(self.step, tf.float32) / float(max(self.total_steps, 1))

  @property
  def epoch(self):
    """float32 scalar: epochs done before this step (2.5: halfway through the third)."""
    return tf.cast(self.step, tf.float32) / float(max(self.steps_per_epoch, 1))


def current():
  """The StepContext of the step being traced, or None outside training."""
  return _CURRENT.get()


@contextlib.contextmanager
def active(step_context):
  """Makes `step_context` current for the code traced inside."""
  token = _CURRENT.set(step_context)
  try:
    yield step_context
  finally:
    _CURRENT.reset(token)
