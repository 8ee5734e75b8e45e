"""Keras' Lion, LAMB and Muon in the optimizer registry: a new optimizer is one builder.

--momentum is beta_1 (Muon: its momentum) and --weight_decay is decoupled, as for the
built-in ones; BatchNorm parameters and biases are excluded from decay by optim.build.

    --optimizer=lion --learning_rate=3e-4            # ~3-10x below AdamW's rate
    --optimizer="muon(ns_steps=5)"
"""

import math
import re

import keras
from keras import ops

from research.optim import OPTIMIZERS


def _fraction(name, value):
  if not 0 <= value < 1:
    raise ValueError(f"{name} must be in [0, 1), got {value}")


@OPTIMIZERS.register("lion")
def lion(learning_rate, config, beta_2=0.99):
  """Lion (Chen et al., 2023): the sign of interpolated momenta; use a smaller lr."""
  _fraction("beta_2", beta_2)
  return keras.optimizers.Lion(learning_rate, beta_1=config.momentum, beta_2=beta_2,
                               weight_decay=config.weight_decay or None)


@OPTIMIZERS.register("lamb")
def lamb(learning_rate, config, beta_2=0.999):
  """LAMB (You et al., 2020): Adam with a per-layer trust ratio, for large batches."""
  _fraction("beta_2", beta_2)
  return keras.optimizers.Lamb(learning_rate, beta_1=config.momentum, beta_2=beta_2,
                               weight_decay=config.weight_decay or None)


class Muon(keras.optimizers.Muon):
  """Keras' Muon, also on conv filters, with airbench94_muon's weight normalization.

  Keras orthogonalizes only 2-D kernels and gives everything else AdamW. Here a conv
  filter bank [kh, kw, in, out] is orthogonalized as the [kh*kw*in, out] matrix it is
  (Jordan's Muon, airbench94_muon). With `normalize_weights`, each such kernel is
  rescaled to Frobenius norm sqrt(out) before its update, which stands in for weight
  decay (airbench94_muon: `p.data.mul_(len(p.data)**0.5 / p.data.norm())`).
  """

  def __init__(self, *args, normalize_weights=False, **kwargs):
    super().__init__(*args, **kwargs)
    self.normalize_weights = normalize_weights

  def _should_use_adamw(self, variable):
    if len(variable.shape) == 4:  # Conv filters: Muon, unless a layer is excluded by name.
      return any(re.search(keyword, variable.path) for keyword in self.exclude_layers)
    return super()._should_use_adamw(variable)

  def _muon_update_step(self, gradient, variable, lr, m):
    if self.normalize_weights:
      norm = ops.sqrt(ops.sum(ops.square(variable)))
      self.assign(variable, variable * (math.sqrt(variable.shape[-1]) / (norm + 1e-12)))
    super()._muon_update_step(gradient, variable, lr, m)

  def zeropower_via_newtonschulz5(self, x, steps):
    shape = x.shape
    matrix = ops.reshape(x, (-1, shape[-1]))  # [kh*kw*in, out]; no-op for a 2-D kernel
    return ops.reshape(super().zeropower_via_newtonschulz5(matrix, steps), shape)

  def lr_adjust(self, x):
    if self.rms_rate is None:
      return x
    fan_in = math.prod(x.shape[:-1])
    return x * math.sqrt(max(fan_in, x.shape[-1])) * self.rms_rate

  def get_config(self):
    return {**super().get_config(), "normalize_weights": self.normalize_weights}


@OPTIMIZERS.register("muon")
def muon(learning_rate, config, momentum=0.0, ns_steps=5, nesterov=True, adam_lr_ratio=0.1,
         rms_rate=0.2, normalize_weights=False):
  """Muon (Jordan et al., 2024) on 2-D kernels and conv filters, AdamW on the rest.

  Kernels are orthogonalized (Newton-Schulz, `ns_steps`); biases and norm parameters
  take Keras' AdamW fallback at `adam_lr_ratio` x the rate. `momentum` 0 takes
  --momentum; `rms_rate` scales updates to AdamW's size (Moonlight; 0: off, as in
  airbench94_muon, whose rate is then that of an orthogonal update);
  `normalize_weights` keeps each kernel at norm sqrt(filters) instead of decaying it.
  """
  _fraction("momentum", momentum)
  if ns_steps < 1 or adam_lr_ratio < 0 or rms_rate < 0:
    raise ValueError(f"needs ns_steps >= 1, adam_lr_ratio >= 0 and rms_rate >= 0, got "
                     f"{ns_steps}, {adam_lr_ratio} and {rms_rate}")
  return Muon(
      learning_rate, momentum=momentum or config.momentum, ns_steps=ns_steps,
      nesterov=nesterov, adam_lr_ratio=adam_lr_ratio, rms_rate=rms_rate or None,
      normalize_weights=normalize_weights, weight_decay=config.weight_decay,
      adam_weight_decay=config.weight_decay)
