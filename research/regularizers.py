"""Weight regularizers: a builder's settings -> `penalty(model) -> scalar`, added to the
training loss (`--regularizers=l2(scale=1e-4)`). The step scales the sum for the replica
count, so the penalty counts once per step whatever the strategy.

Biases and BatchNorm parameters and statistics are left out, as weight decay leaves
them out (`optim.NO_DECAY`).
"""

import tensorflow as tf

from research.optim import NO_DECAY
from research.registry import Registry

REGULARIZERS = Registry("regularizer")


def penalized(model):
  """The trainable weights a penalty applies to: kernels, not biases or norm params."""
  return [v for v in model.trainable_variables if v.name not in NO_DECAY]


def _check(name, scale):
  if not scale >= 0:
    raise ValueError(f"{name}: scale must be >= 0, got {scale}")


@REGULARIZERS.register("l2")
def l2(scale=1e-4):
  """scale * sum of squared weights (coupled L2, as Keras' regularizers.L2)."""
  _check("l2", scale)
  return lambda model: scale * tf.add_n(
      [tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in penalized(model)])


@REGULARIZERS.register("l1")
def l1(scale=1e-5):
  """scale * sum of absolute weights: pushes weights to exactly zero."""
  _check("l1", scale)
  return lambda model: scale * tf.add_n(
      [tf.reduce_sum(tf.abs(tf.cast(v, tf.float32))) for v in penalized(model)])
