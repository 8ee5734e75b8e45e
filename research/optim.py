"""Optimizers and learning-rate schedules, each a registered builder.

An optimizer builder takes the learning-rate schedule and the config (for the shared
--momentum and --weight_decay), and may declare settings of its own as keyword
parameters (`--optimizer="lion(beta_2=0.98)"`).

Schedules are `keras.optimizers.schedules.LearningRateSchedule`s of the step, with a
linear warmup over `config.warmup_steps` in front of every one of them. A schedule is
a shape: the multiplier of the peak as a function of the fraction of decay done.
"""

import math

import keras
import tensorflow as tf

from research.registry import Registry

OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("schedule")

# Variable names of BatchNorm's learned parameters (`--bn_lr_scale` scales their updates).
BATCHNORM_PARAMS = ("gamma", "beta")
# Never decayed: BatchNorm parameters and statistics, and biases (matched on names).
NO_DECAY = BATCHNORM_PARAMS + ("bias", "moving_mean", "moving_variance")


class Warmup(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warmup from `warmup_from` x peak to the peak over `warmup_steps`, then the
  decay `shape`, rescaled to end at `decay_to` x peak instead of 0."""

  def __init__(self, peak, warmup_steps, decay_steps, shape, warmup_from=0.0, decay_to=0.0):
    self.peak, self.warmup_steps, self.decay_steps = peak, warmup_steps, decay_steps
    self.shape = shape  # fraction in [0, 1] of decay -> multiplier
    self.warmup_from, self.decay_to = warmup_from, decay_to

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    warm = step / max(1, self.warmup_steps)
    warm = self.warmup_from + (1.0 - self.warmup_from) * warm
    done = tf.clip_by_value((step - self.warmup_steps) / max(1, self.decay_steps), 0.0, 1.0)
    decay = self.decay_to + (1.0 - self.decay_to) * self.shape(done)
    return self.peak * tf.where(step < self.warmup_steps, warm, decay)

  def get_config(self):
    return {"peak": self.peak, "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps, "warmup_from": self.warmup_from,
            "decay_to": self.decay_to}


def schedule(config):
  """The learning rate as a function of the optimizer's update count (with
  --grad_accum_steps=N, one update every N steps)."""
  shape = SCHEDULES.get(config.schedule)
  updates, warmup = config.train_steps // config.grad_accum_steps, 0
  if config.warmup_steps:
    warmup = max(1, config.warmup_steps // config.grad_accum_steps)
  return Warmup(config.learning_rate, warmup, max(1, updates - warmup), shape,
                warmup_from=config.warmup_from, decay_to=config.decay_to)


@SCHEDULES.register("constant")
def constant(done):
  return tf.ones_like(done)


@SCHEDULES.register("cosine")
def cosine(done):
  return 0.5 * (1.0 + tf.cos(math.pi * done))


@SCHEDULES.register("linear")
def linear(done):
  """Linear decay to 0: with warmup, the one-cycle triangle of the fast CIFAR recipes."""
  return 1.0 - done


@SCHEDULES.register("step")
def step(done):
  """x0.1 at 50% and 75% of training, the classic ResNet schedule."""
  return tf.where(done < 0.5, 1.0, tf.where(done < 0.75, 0.1, 0.01))


def build(config):
  """The optimizer, wrapped in a LossScaleOptimizer under mixed_float16."""
  optimizer = OPTIMIZERS.build(config.optimizer, schedule(config), config)
  if config.weight_decay:
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY))
  if config.precision == "mixed_float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


@OPTIMIZERS.register("sgd")
def sgd(learning_rate, config):
  return keras.optimizers.SGD(learning_rate, momentum=config.momentum,
                              nesterov=config.nesterov,
                              weight_decay=config.weight_decay or None)


@OPTIMIZERS.register("adam")
def adam(learning_rate, config):
  """Adam as the Keras tutorials use it; --weight_decay is decoupled (AdamW-style)."""
  return keras.optimizers.Adam(learning_rate, beta_1=config.momentum,
                               weight_decay=config.weight_decay or None)


@OPTIMIZERS.register("adamw")
def adamw(learning_rate, config):
  return keras.optimizers.AdamW(learning_rate, beta_1=config.momentum,
                                weight_decay=config.weight_decay)
