"""Adaptive gradient clipping (Brock et al., 2021, "High-Performance Large-Scale Image
Recognition Without Normalization"), unit-wise: each output unit's gradient is scaled
down so that ||g|| <= clipping * max(||w||, eps), with the norms over that unit's
weights (a kernel's last axis is its units; a bias or scale vector is one unit).

    --param_rules="kernels(grad='agc(clipping=0.01)')"   # the kernels only
    --grad_transforms="agc(clipping=0.01)"                # every trained variable
"""

import tensorflow as tf

from research.gradients import GRAD_TRANSFORMS


def unit_norms(x):
  """The norm of each output unit of `x`, broadcastable against `x`."""
  axes = list(range(len(x.shape) - 1)) if len(x.shape) > 1 else None
  return tf.sqrt(tf.reduce_sum(tf.square(x), axis=axes, keepdims=True))


@GRAD_TRANSFORMS.register("agc")
def agc(clipping=0.01, eps=1e-3):
  """Unit-wise adaptive gradient clipping: ||g|| <= clipping * max(||w||, eps)."""
  if not clipping > 0 or not eps >= 0:
    raise ValueError(f"agc: clipping must be > 0 and eps >= 0, got {clipping}, {eps}")

  def clip(g, w):
    most = clipping * tf.maximum(unit_norms(tf.cast(w, g.dtype)), eps)
    norm = unit_norms(g)
    return tf.where(norm > most, g * (most / tf.maximum(norm, 1e-6)), g)
  return lambda grads, variables: [clip(g, w) for g, w in zip(grads, variables)]
