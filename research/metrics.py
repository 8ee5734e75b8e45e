"""Exact metric sums that work inside `strategy.run`.

Each sum is an ON_READ/SUM variable: replicas add locally, and a read outside the
replica sums across them. Results are sums divided by the example count, so the
figures are exact, whatever the batch size, padding or number of replicas.
"""

import tensorflow as tf


class Metrics:
  """loss, accuracy and top-5 accuracy over every example seen since `reset`."""

  _SUMS = ("loss", "correct", "top5", "examples")

  def __init__(self):
    self.sums = {name: tf.Variable(0.0, trainable=False, name=f"{name}_sum",
                                   synchronization=tf.VariableSynchronization.ON_READ,
                                   aggregation=tf.VariableAggregation.SUM)
                 for name in self._SUMS}

  def update(self, labels, logits, per_example_loss, mask=None):
    """Adds a batch (replica context). `mask` weights examples; padding has 0."""
    mask = tf.ones_like(per_example_loss) if mask is None else mask
    k = min(5, logits.shape[-1])
    labels = tf.cast(labels, tf.int32)
    top1 = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
    top5 = tf.cast(tf.math.in_top_k(labels, tf.cast(logits, tf.float32), k), tf.float32)
    # where, not a product: a skipped step's NaN loss times 0 is still NaN.
    self.sums["loss"].assign_add(tf.reduce_sum(tf.where(mask > 0, per_example_loss, 0.0) * mask))
    self.sums["correct"].assign_add(tf.reduce_sum(top1 * mask))
    self.sums["top5"].assign_add(tf.reduce_sum(top5 * mask))
    self.sums["examples"].assign_add(tf.reduce_sum(mask))

  def result(self):
    """{loss, accuracy, top5, examples} as Python numbers (cross-replica sums)."""
    sums = {name: float(v.read_value()) for name, v in self.sums.items()}
    n = max(sums["examples"], 1.0)
    return {"loss": sums["loss"] / n, "accuracy": sums["correct"] / n,
            "top5": sums["top5"] / n, "examples": int(round(sums["examples"]))}

  def reset(self):
    for v in self.sums.values():
      v.assign(0.0)
