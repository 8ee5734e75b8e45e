"""Optimizers and learning-rate schedules, each a registered builder.

An optimizer builder takes the learning-rate schedule and the config (for the shared
--momentum and --weight_decay), and may declare settings of its own as keyword
parameters (`--optimizer="lion(beta_2=0.98)"`).

Schedules are `keras.optimizers.schedules.LearningRateSchedule`s of the step, with a
linear warmup over `config.warmup_steps` in front of every one of them. A schedule is
a shape: the multiplier of the peak as a function of the fraction of decay done.
"""

import dataclasses
import math
import re
from typing import Callable, Optional

import keras
import tensorflow as tf

from research import models
from research.config import ConfigError
from research.gradients import GRAD_TRANSFORMS
from research.registry import Registry

OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("schedule")
RULES = Registry("parameter rule")

# Variable names of BatchNorm's learned parameters (the `batchnorm` rule's).
BATCHNORM_PARAMS = ("gamma", "beta")
# Not decayed unless a rule says so: BatchNorm parameters and statistics, and biases
# (matched on names).
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


def schedule(config, peak=0.0, steps=0):
  """The learning rate as a function of the optimizer's update count (with
  --grad_accum_steps=N, one update every N steps), peaking at `peak` if given, else at
  --learning_rate, and decaying over the run or, if given, its first `steps` steps."""
  shape = SCHEDULES.get(config.schedule)
  updates, warmup = (steps or config.train_steps) // config.grad_accum_steps, 0
  if config.warmup_steps:
    warmup = max(1, config.warmup_steps // config.grad_accum_steps)
  return Warmup(peak or config.learning_rate, warmup, max(1, updates - warmup), shape,
                warmup_from=config.warmup_from, decay_to=config.decay_to)


@SCHEDULES.register("constant")
def constant(done):
  """The peak learning rate throughout (after any warmup)."""
  return tf.ones_like(done)


@SCHEDULES.register("cosine")
def cosine(done):
  """Half a cosine from the peak to --decay_to: the default of most models."""
  return 0.5 * (1.0 + tf.cos(math.pi * done))


@SCHEDULES.register("linear")
def linear(done):
  """Linear decay to 0: with warmup, the one-cycle triangle of the fast CIFAR recipes."""
  return 1.0 - done


@SCHEDULES.register("step")
def step(done):
  """x0.1 at 50% and 75% of training, the classic ResNet schedule."""
  return tf.where(done < 0.5, 1.0, tf.where(done < 0.75, 0.1, 0.01))


# --- per-variable rules -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
  """Settings of the trainable variables `match(model, variable)` selects.

  `--param_rules` lists rules in order and the first that matches a variable wins
  (airbench's parameter groups, optax's multi_transform); unmatched variables take the
  defaults. --weight_decay applies to a rule's variables if its `weight_decay` is True,
  not if False, and by default to all but names in NO_DECAY (biases, BatchNorm).
  """
  name: str
  match: Callable = lambda model, variable: True
  optimizer: str = ""          # optimizer item for these variables ("": --optimizer)
  lr_scale: float = 1.0        # multiplies their gradients: their learning rate, for SGD
  weight_decay: Optional[bool] = None  # whether --weight_decay applies (None: not to NO_DECAY)
  train_steps: int = 0         # > 0: they train for this many steps, then stay fixed
  learning_rate: float = 0.0   # > 0: the peak rate of their optimizer, its own instance
  schedule_steps: int = 0      # > 0: their own optimizer's schedule ends at this step
  grad: str = ""               # a gradient transform item of theirs (research/gradients.py)


DEFAULT_RULE = Rule("default")


def _rule(name, match, optimizer, lr_scale, weight_decay=None, train_steps=0,
          learning_rate=0.0, schedule_steps=0, grad=""):
  if weight_decay not in (None, True, False):
    raise ValueError(f"{name}: weight_decay must be True or False, got {weight_decay!r}")
  if not lr_scale > 0:
    raise ValueError(f"{name}: lr_scale must be > 0, got {lr_scale}")
  if not learning_rate >= 0:
    raise ValueError(f"{name}: learning_rate must be >= 0 (0: --learning_rate), got "
                     f"{learning_rate}")
  if optimizer:
    OPTIMIZERS.parse(optimizer)  # An unknown optimizer fails here, before any data.
  if grad:
    GRAD_TRANSFORMS.build(grad)  # Its parse and its builder's checks, before any data.
  return Rule(name, match, optimizer, float(lr_scale), weight_decay, train_steps,
              float(learning_rate), schedule_steps, grad)


def _steps(config, epochs):
  """Steps of `epochs` (0: no limit), at least one: a span shorter than a step must not
  round to 0, which means training throughout."""
  if not epochs >= 0:
    raise ValueError(f"epochs must be >= 0 (0: all of the run), got {epochs}")
  return max(1, int(round(epochs * config.steps_per_epoch))) if epochs else 0


@RULES.register("batchnorm")
def batchnorm(config, lr_scale=1.0, optimizer="", learning_rate=0.0, weight_decay=None,
              grad=""):
  """BatchNorm's learned scale and offset (airbench's bias_scaler: lr_scale=64);
  `weight_decay=True` decays them too (airbench decays its norm biases)."""
  del config
  return _rule("batchnorm", lambda model, v: v.name in BATCHNORM_PARAMS, optimizer, lr_scale,
               weight_decay, learning_rate=learning_rate, grad=grad)


@RULES.register("kernels")
def kernels(config, rank=0, optimizer="", lr_scale=1.0, weight_decay=None, learning_rate=0.0,
            grad=""):
  """Weight kernels of rank `rank` (4: conv filters, 2: dense; 0: both), e.g. Muon's;
  `grad='agc(clipping=0.01)'` transforms their gradient."""
  del config
  match = lambda model, v: v.name == "kernel" and (not rank or len(v.shape) == rank)
  return _rule(f"kernels(rank={rank})", match, optimizer, lr_scale, weight_decay,
               learning_rate=learning_rate, grad=grad)


@RULES.register("whitening_bias")
def whitening_bias(config, epochs=3.0, optimizer="", lr_scale=1.0, decay=False,
                   weight_decay=None):
  """airbench's patch-whitening bias, trained for the first `epochs` only; `decay=True`
  gives it its own schedule that ends with those epochs (airbench94_muon's), instead of
  the run's schedule cut off there."""
  if decay and not epochs:
    raise ValueError("whitening_bias: decay=True needs epochs > 0")
  match = lambda model, v: any(v is b for b in models.whitening_biases(model))
  steps = _steps(config, epochs)
  return _rule("whitening_bias", match, optimizer, lr_scale, weight_decay, train_steps=steps,
               schedule_steps=steps if decay else 0)


@RULES.register("pattern")
def pattern(config, regex="", optimizer="", lr_scale=1.0, weight_decay=None, epochs=0.0,
            learning_rate=0.0, grad=""):
  """Variables whose path matches `regex` (re.search), e.g. 'dense|logits'."""
  if not regex:
    raise ValueError("pattern: needs regex='...'")
  try:
    compiled = re.compile(regex)
  except re.error as e:
    raise ValueError(f"pattern: regex={regex!r} is not a regular expression ({e})") from None
  return _rule(f"pattern({regex!r})", lambda model, v: bool(compiled.search(v.path)),
               optimizer, lr_scale, weight_decay, _steps(config, epochs), learning_rate,
               grad=grad)


def rule_specs(config):
  """The items of --param_rules, in order."""
  return [str(s) for s in RULES.parse_list(config.param_rules)]


def variable_rules(config, model):
  """The Rule of each trainable variable of `model` (a resolved config).

  Raises ConfigError for a rule that matches no variable: a typo, or a model without
  the layer (whitening_bias on a model without patch whitening).
  """
  rules = [RULES.build(spec, config) for spec in rule_specs(config)]
  variables = model.trainable_variables
  chosen = [next((r for r in rules if r.match(model, v)), DEFAULT_RULE) for v in variables]
  for spec, rule in zip(rule_specs(config), rules):
    if not any(rule.match(model, v) for v in variables):
      raise ConfigError(f"--param_rules: {spec} matches no trainable variable of "
                        f"--model={config.model}")
  return chosen


def decays(variable, rule):
  """Whether --weight_decay applies to `variable`, whose rule is `rule`."""
  if rule.weight_decay is None:
    return variable.name not in NO_DECAY
  return rule.weight_decay


class Optimizers(tf.Module):
  """Several optimizers, each for the variables its rules give it, used as one.

  Each applies its own variables' gradients (and all-reduces them under a strategy);
  the first, --optimizer's, gives the learning rate and iteration count that are logged.
  """

  def __init__(self, optimizers, variables_of):
    super().__init__(name="optimizers")
    self.optimizers = optimizers  # tracked: each is checkpointed under its index
    self._variables_of = variables_of  # [list of variable ids] per optimizer

  @property
  def learning_rate(self):
    return self.optimizers[0].learning_rate

  @property
  def iterations(self):
    return self.optimizers[0].iterations

  @property
  def variables(self):
    return [v for optimizer in self.optimizers for v in optimizer.variables]

  def build(self, variables):
    for optimizer, ids in zip(self.optimizers, self._variables_of):
      optimizer.build([v for v in variables if id(v) in ids])

  def scale_loss(self, loss):
    return loss

  def apply_gradients(self, grads_and_vars):
    grads_and_vars = list(grads_and_vars)
    for optimizer, ids in zip(self.optimizers, self._variables_of):
      mine = [(g, v) for g, v in grads_and_vars if id(v) in ids]
      if mine:
        optimizer.apply_gradients(mine)
      else:  # All its variables are frozen (--freeze_epochs): its schedule goes on.
        optimizer.iterations.assign_add(1)


def build(config, model, rules):
  """The optimizer(s) of `model`'s variables by their `rules` (variable_rules'); a
  LossScaleOptimizer under mixed_float16. One optimizer unless rules name others or
  their own peak learning rate or schedule (then `Optimizers`)."""
  variables = model.trainable_variables
  groups = {}  # (optimizer item, peak rate, schedule steps) -> variables, --optimizer's first
  groups[config.optimizer, 0.0, 0] = []
  for variable, rule in zip(variables, rules):
    key = (rule.optimizer or config.optimizer, rule.learning_rate, rule.schedule_steps)
    groups.setdefault(key, []).append((variable, rule))
  groups = {key: members for key, members in groups.items() if members}
  optimizers = []
  for (item, peak, steps), members in groups.items():
    try:
      optimizer = OPTIMIZERS.build(item, schedule(config, peak, steps), config)
    except ValueError as e:  # The builder's own checks of its settings.
      raise ConfigError(f"optimizer {item}: {e}") from None
    if config.weight_decay:
      optimizer.exclude_from_weight_decay(
          var_list=[v for v, rule in members if not decays(v, rule)])
    optimizers.append(optimizer)
  if len(optimizers) > 1:
    if config.precision == "mixed_float16":
      raise ConfigError("--param_rules with several optimizers cannot run under "
                        "mixed_float16 (one loss scale per optimizer); use float32 or "
                        "mixed_bfloat16")
    return Optimizers(optimizers, [{id(v) for v, _ in members} for members in groups.values()])
  optimizer = optimizers[0]
  if config.precision == "mixed_float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def scales_loss(optimizer):
  """Whether `optimizer` is mixed_float16's LossScaleOptimizer."""
  return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def loss_scale(optimizer):
  """A LossScaleOptimizer's current scale as a float32 tensor (mixed_float16), or 1."""
  return tf.cast(optimizer.dynamic_scale, tf.float32) if scales_loss(optimizer) else 1.0


def unscaled(optimizer, grads):
  """`grads` of the loss as the step differentiates it (times the loss scale under
  mixed_float16), as float32 gradients of the loss itself."""
  scale = loss_scale(optimizer)
  return [None if g is None else tf.cast(g, tf.float32) / scale for g in grads]


def lower_loss_scale(optimizer):
  """Halves a LossScaleOptimizer's scale after a step with non-finite gradients, as its
  own check does; the step calls it because that check sees one replica only."""
  if scales_loss(optimizer):
    optimizer.step_counter.assign(0)
    optimizer.dynamic_scale.assign(optimizer.dynamic_scale * 0.5)


@OPTIMIZERS.register("sgd")
def sgd(learning_rate, config):
  """SGD with --momentum (Nesterov unless --nonesterov) and decoupled --weight_decay."""
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
  """Keras' AdamW class: Adam (beta_1 --momentum) with decoupled --weight_decay, the
  same update as adam here; for configs that name AdamW."""
  return keras.optimizers.AdamW(learning_rate, beta_1=config.momentum,
                                weight_decay=config.weight_decay)
