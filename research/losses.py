"""Per-example losses on float32 logits: `loss(labels, logits, config) -> [B]`.

The loop averages them over the GLOBAL batch, so a loss never divides by a batch size.
"""

import tensorflow as tf

from research.registry import Registry

LOSSES = Registry("loss")


@LOSSES.register("cross_entropy")
def cross_entropy(labels, logits, config):
  """Softmax cross-entropy with `--label_smoothing`."""
  num_classes = logits.shape[-1]
  targets = tf.one_hot(labels, num_classes, dtype=logits.dtype)
  if config.label_smoothing:
    targets = targets * (1.0 - config.label_smoothing) + config.label_smoothing / num_classes
  return tf.nn.softmax_cross_entropy_with_logits(targets, logits)
