"""Expected calibration error (Guo et al., 2017): how far the model's confidence is from
its accuracy. Examples are binned by confidence (the top softmax probability); ECE is
the example-weighted mean over bins of |accuracy - mean confidence|. Exact under any
strategy: the per-bin counts, confidences and hits are masked sums like every metric.

    --metrics=ece  or  --metrics="ece(bins=10)"
"""

import numpy as np
import tensorflow as tf

from research.metrics import METRICS, Metric, hits, masked_sum


@METRICS.register("ece")
def ece(num_classes, class_names, bins=15):
  """Expected calibration error over `bins` equal-width confidence bins."""
  del num_classes, class_names
  if bins < 1:
    raise ValueError(f"ece: bins must be >= 1, got {bins}")

  def sums(outputs, batch, per_example_loss, mask):
    del per_example_loss
    confidence = tf.reduce_max(tf.nn.softmax(outputs["logits"]), axis=-1)
    # Bin b holds confidences in (b/bins, (b+1)/bins]; the first also holds 0.
    index = tf.clip_by_value(tf.cast(tf.math.ceil(confidence * bins), tf.int32) - 1,
                             0, bins - 1)
    in_bin = tf.one_hot(index, bins)  # [B, bins]
    return {"count": masked_sum(in_bin, mask),
            "confidence": masked_sum(in_bin * confidence[:, None], mask),
            "hits": masked_sum(in_bin * hits(outputs, batch)[:, None], mask)}

  def result(sums, examples):
    count = np.maximum(sums["count"], 1e-12)
    gaps = np.abs(sums["hits"] / count - sums["confidence"] / count)
    return {"ece": float(np.sum(sums["count"] * gaps) / examples)}

  return Metric(shapes={"count": (bins,), "confidence": (bins,), "hits": (bins,)},
                sums=sums, result=result)
