"""The update-to-weight ratio of each layer (as in Karpathy's "A Recipe for Training
Neural Networks"): the norm of a step's update over the norm of the weights, about 1e-3
when the learning rate suits the layer. A probe: it runs inside the compiled step after
the update, and its per-layer means reach TensorBoard at every --log_every.

    --probes=weight_norm,update_norm,update_ratio
"""

import tensorflow as tf

from research.probes import PROBES, Probe, layer_of


@PROBES.register("update_ratio")
def update_ratio():
  """Per layer, the norm of each step's update over the norm of its weights after it:
  `update_ratio/<layer>`."""
  def values(step):
    by_layer = {}
    for variable, update in zip(step.variables, step.updates):
      by_layer.setdefault(layer_of(variable), []).append((variable, update))
    return {f"update_ratio/{layer}": tf.linalg.global_norm([u for _, u in pairs])
            / (tf.linalg.global_norm([v for v, _ in pairs]) + 1e-12)
            for layer, pairs in by_layer.items()}

  keys = lambda model: sorted({f"update_ratio/{layer_of(v)}" for v in model.trainable_variables})
  return Probe(values, keys, reads_before=True)
