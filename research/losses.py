"""Per-example losses: a builder's settings -> `loss(outputs, batch) -> [B]` float32.

`outputs` is the model's dict (`logits` float32 [B,K], and any other outputs a model
returns); `batch` holds `label` int32 [B] and `target` float32 [B,K], a distribution
over classes (one-hot, or mixed by an augmentation such as mixup). The step averages
the values over the GLOBAL batch, so a loss never divides by a batch size.

    @LOSSES.register("focal")
    def focal(gamma=2.0):                 # --loss="focal(gamma=1.0)"
      def loss(outputs, batch): ...
      return loss
"""

import tensorflow as tf

from research.registry import Registry

LOSSES = Registry("loss")


def smoothed(target, label_smoothing):
  """`target` moved toward the uniform distribution by `label_smoothing`."""
  if not label_smoothing:
    return target
  return target * (1.0 - label_smoothing) + label_smoothing / target.shape[-1]


@LOSSES.register("cross_entropy")
def cross_entropy(label_smoothing=0.0):
  """Softmax cross-entropy against the batch's target, with label smoothing."""
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1), got "
                     f"{label_smoothing}")

  def loss(outputs, batch):
    logits = outputs["logits"]
    target = smoothed(tf.cast(batch["target"], logits.dtype), label_smoothing)
    return tf.nn.softmax_cross_entropy_with_logits(target, logits)

  return loss
