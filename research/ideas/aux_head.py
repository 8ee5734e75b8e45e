"""A model with an auxiliary output, and the loss that reads it (as GoogLeNet's side
classifiers): the model returns a dict of outputs, and the loss takes any of them.

    --model=baseline_cnn_aux --loss="aux_cross_entropy(weight=0.3)"

Evaluation, metrics and saved models use `logits`; `aux_logits` only trains.
"""

import keras
from keras import layers

from research.losses import LOSSES, cross_entropy
from research.models.cnn import TUTORIAL, baseline_cnn
from research.models.registry import MODELS, training_defaults


@MODELS.register("baseline_cnn_aux")
def baseline_cnn_aux(num_classes, image_size):
  """The tutorial's CNN with an auxiliary classifier on its second conv block."""
  base = baseline_cnn(num_classes, image_size)
  second_conv = [layer for layer in base.layers if isinstance(layer, layers.Conv2D)][1]
  side = layers.GlobalAveragePooling2D()(second_conv.output)
  aux = layers.Dense(num_classes, dtype="float32", name="aux_logits")(side)
  return keras.Model(base.input, {"logits": base.output, "aux_logits": aux},
                     name="baseline_cnn_aux")


training_defaults("baseline_cnn_aux", **TUTORIAL, loss="aux_cross_entropy(weight=0.3)")


@LOSSES.register("aux_cross_entropy")
def aux_cross_entropy(weight=0.3, label_smoothing=0.0):
  """Cross-entropy of `logits` plus `weight` x that of `aux_logits` where present."""
  if weight < 0:
    raise ValueError(f"aux_cross_entropy: weight must be >= 0, got {weight}")
  main = cross_entropy(label_smoothing)

  def loss(outputs, batch):
    total = main(outputs, batch)
    if "aux_logits" in outputs:
      total += weight * main({"logits": outputs["aux_logits"]}, batch)
    return total

  return loss
