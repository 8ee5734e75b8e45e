"""Keras' Lion, LAMB and Muon in the optimizer registry: a new optimizer is one builder.

--momentum is beta_1 (Muon: its momentum) and --weight_decay is decoupled, as for the
built-in ones; BatchNorm parameters and biases are excluded from decay by optim.build.

    --optimizer=lion --learning_rate=3e-4            # ~3-10x below AdamW's rate
    --optimizer="muon(ns_steps=5)"
"""

import keras

from research.optim import OPTIMIZERS


@OPTIMIZERS.register("lion")
def lion(learning_rate, config, beta_2=0.99):
  """Lion (Chen et al., 2023): the sign of interpolated momenta; use a smaller lr."""
  return keras.optimizers.Lion(learning_rate, beta_1=config.momentum, beta_2=beta_2,
                               weight_decay=config.weight_decay or None)


@OPTIMIZERS.register("lamb")
def lamb(learning_rate, config, beta_2=0.999):
  """LAMB (You et al., 2020): Adam with a per-layer trust ratio, for large batches."""
  return keras.optimizers.Lamb(learning_rate, beta_1=config.momentum, beta_2=beta_2,
                               weight_decay=config.weight_decay or None)


@OPTIMIZERS.register("muon")
def muon(learning_rate, config, ns_steps=5, nesterov=True, adam_lr_ratio=0.1):
  """Muon (Jordan et al., 2024) on 2-D kernels, AdamW on the rest, as Keras does it.

  Keras' Muon orthogonalizes only 2-D variables (dense kernels); 4-D conv kernels,
  biases and norm parameters take its AdamW fallback at `adam_lr_ratio` x the rate.
  """
  return keras.optimizers.Muon(
      learning_rate, momentum=config.momentum, ns_steps=ns_steps, nesterov=nesterov,
      adam_lr_ratio=adam_lr_ratio, weight_decay=config.weight_decay,
      adam_weight_decay=config.weight_decay)
