"""Top-1 accuracy of each class, reported as `per_class_accuracy/<class name>` (one
TensorBoard chart per class, grouped). A class with no example reports 0.

    --metrics=per_class_accuracy
"""

import numpy as np
import tensorflow as tf

from research.metrics import METRICS, Metric, hits, masked_sum


@METRICS.register("per_class_accuracy")
def per_class_accuracy(num_classes, class_names):
  """Accuracy of each class, named by class."""

  def sums(outputs, batch, per_example_loss, mask):
    del per_example_loss
    of_class = tf.one_hot(tf.cast(batch["label"], tf.int32), num_classes)  # [B, K]
    return {"examples": masked_sum(of_class, mask),
            "hits": masked_sum(of_class * hits(outputs, batch)[:, None], mask)}

  def result(sums, examples):
    del examples
    accuracy = sums["hits"] / np.maximum(sums["examples"], 1.0)
    return {f"per_class_accuracy/{name}": float(a) for name, a in zip(class_names, accuracy)}

  return Metric(shapes={"examples": (num_classes,), "hits": (num_classes,)},
                sums=sums, result=result)
