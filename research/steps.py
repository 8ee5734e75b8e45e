"""The training step: step kinds in a registry, and the compiled loops that run them.

A step kind computes one replica's gradients: `kind(state, forward_backward, batch) ->
Pass`, where `forward_backward(batch) -> Pass` is one pass at the current weights. The
`standard` kind is one forward and backward pass; others (SAM's two passes, see
research/ideas/sam.py) are one registered builder each. What happens after is the
same for every kind: the gradient path, a list of small stages in the StepSpec (on each
replica: lr scales, the finiteness check, accumulation; then for each update: gradient
transforms, the optimizer, update scales, frozen variables, keep-or-undo and weight
averaging), and the metric and probe sums, in `make_train_loop`.

Everything the compiled code reads is fixed before tracing in an immutable `StepSpec`
built from the config once; no Config is read inside compiled code, and a step can be
tested on one batch.
"""

import dataclasses
from typing import Any, Callable, NamedTuple

import tensorflow as tf
from tensorflow.python.framework import config as _tf_config  # pylint: disable=g-direct-tensorflow-import

from research import context as context_lib
from research import data as data_lib, gradients, losses, models, optim, predict
from research import regularizers
from research import probes as probes_lib
from research.config import ConfigError
from research.registry import Registry

STEPS = Registry("step")


class Pass(NamedTuple):
  """One replica's forward and backward pass."""
  outputs: dict      # the model's outputs, float32 logits
  per_example: Any   # float32 [B] loss of each example
  loss: Any          # the differentiated scalar: this replica's share of the global mean
  grads: list        # of the loss (scaled under mixed_float16), one per trainable variable


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """What the compiled steps read, fixed before tracing."""
  kind: Callable              # (state, forward_backward, batch) -> Pass
  loss: Callable              # (outputs, batch) -> per-example [B]
  regularizers: tuple         # of (model) -> scalar penalty
  global_batch_size: int
  grad_scales: tuple          # a multiplier per trainable variable (rules' lr_scale)
  loss_scaling: bool          # mixed_float16: gradients are of the loss times a scale
  frozen_after: tuple         # (variable index, steps): it stays fixed after `steps`
  update_scales: tuple = ()   # (variable index, multiplier of its update): lr scales
  head: tuple = ()            # indices of the head's variables (the `logits` layer)
  freeze_steps: int = 0       # the first steps train only the head (a phase of its own)
  head_only: bool = False     # this spec's phase: the head alone, the rest in inference
  grad_accum_steps: int = 1   # steps whose gradients are averaged into one update
  tta: str = "none"           # test-time augmentation of the eval step
  inject_nan_step: int = 0    # fault injection: this step's loss is NaN (0: never)
  jit_compile: bool = False   # XLA for the forward and backward pass
  total_steps: int = 0        # the run's length, and an epoch's, for the step context
  steps_per_epoch: int = 0
  grad_transforms: Any = None  # research.gradients.Transforms of the update, or None

  @classmethod
  def from_config(cls, config, model, rules):
    """The spec of `config` for `model`, whose variables' Rules are `rules`."""
    head = ()
    if config.freeze_steps or config.backbone_lr_scale != 1.0:
      head = models.head_indices(model)
      if not head:
        raise ConfigError(f"--freeze_epochs and --backbone_lr_scale need a head: --model="
                          f"{config.model} has no layer named {models.HEAD_LAYER!r}")
    backbone = [i for i in range(len(rules)) if i not in head]
    return cls(
        kind=STEPS.build(config.step), loss=losses.LOSSES.build(config.loss),
        regularizers=tuple(regularizers.REGULARIZERS.build(spec) for spec in
                           regularizers.REGULARIZERS.parse_list(config.regularizers)),
        global_batch_size=config.batch_size,
        grad_scales=tuple(rule.lr_scale for rule in rules),
        frozen_after=tuple((i, rule.train_steps) for i, rule in enumerate(rules)
                           if rule.train_steps),
        update_scales=tuple((i, config.backbone_lr_scale) for i in backbone
                            if config.backbone_lr_scale != 1.0),
        head=head, freeze_steps=config.freeze_steps,
        loss_scaling=config.precision == "mixed_float16",
        grad_accum_steps=config.grad_accum_steps,
        tta=config.tta,
        inject_nan_step=config.inject_nan_step, jit_compile=config.jit_compile,
        total_steps=config.train_steps, steps_per_epoch=config.steps_per_epoch,
        grad_transforms=gradients.Transforms.build(config.grad_transforms, rules))

  # The gradient path, in order: stages `(state, spec, Gradients) -> Gradients` on each
  # replica, then for each update applied `(Update) -> None` in cross-replica context.

  @property
  def replica_path(self):
    """The stages on each replica's gradients, in order."""
    stages = [check_finite] + ([accumulate] if self.grad_accum_steps > 1 else [])
    if self.grad_transforms is None and any(s != 1.0 for s in self.grad_scales):
      stages.insert(0, scale_by_rules)  # With transforms, after them (`transformed`).
    return tuple(stages)

  @property
  def update_path(self):
    """The stages of an update, in order."""
    stages = [apply_gradients if self.grad_transforms is None else transform_and_apply]
    stages += [scale_updates] if self.update_scales else []
    stages += [freeze] if self.frozen_after else []
    return tuple(stages + [keep_or_undo])

  def context(self, state):
    """The StepContext of the step the train loop runs: `state.step` read where it is
    traced, so inside `tf.range` it is each iteration's own step."""
    return context_lib.StepContext(state.step.read_value, self.total_steps,
                                   self.steps_per_epoch)


def forward_backward(state, spec, batch):
  """One forward and backward pass of a replica's batch at the current weights.

  In the head-only phase the model runs in inference mode (BatchNorm on its moving
  statistics) and only the head's gradients are computed; the others are None.
  """
  model = state.model
  variables = model.trainable_variables
  targets = [variables[i] for i in spec.head] if spec.head_only else variables
  with tf.GradientTape() as tape:
    outputs = predict.outputs(model, batch["image"], training=not spec.head_only)
    per_example = spec.loss(outputs, batch)
    if spec.inject_nan_step:  # Fault injection, to test --on_nan.
      per_example *= tf.where(state.step + 1 == spec.inject_nan_step, float("nan"), 1.0)
    # Averaged over the GLOBAL batch: replicas' gradients are then summed.
    loss = tf.nn.compute_average_loss(per_example, global_batch_size=spec.global_batch_size)
    penalties = list(model.losses) + [penalty(model) for penalty in spec.regularizers]
    if penalties:
      loss += tf.nn.scale_regularization_loss(tf.add_n(penalties))
    scaled = state.optimizer.scale_loss(loss)  # Identity unless mixed_float16.
  grads = tape.gradient(scaled, targets)
  if spec.head_only:
    by_index = dict(zip(spec.head, grads))
    grads = [by_index.get(i) for i in range(len(variables))]
  return Pass(outputs, per_example, loss, grads)


def bind(state, spec):
  """`forward_backward` of this state and spec as `batch -> Pass`, compiled with XLA
  under --jit_compile. Step kinds call it once per pass they need."""
  bound = lambda batch: forward_backward(state, spec, batch)
  return tf.function(bound, jit_compile=True) if spec.jit_compile else bound


@STEPS.register("standard")
def standard():
  """One forward and backward pass per step."""
  return lambda state, forward_backward, batch: forward_backward(batch)


# --- the compiled loops -------------------------------------------------------------


def make_train_loop(state, spec, strategy):
  """`train_loop(iterator, num_steps)`: num_steps steps over `tf.range` in one call."""

  passes = bind(state, spec)

  def step_fn(batch):
    # BatchNorm statistics change in the forward pass: kept to put back if the step
    # is not applied.
    stats = [tf.identity(v) for v in state.model.non_trainable_variables]
    with tf.control_dependencies(stats), context_lib.active(spec.context(state)):
      result = spec.kind(state, passes, batch)
    path = Gradients(result.grads, result.loss)
    for stage in spec.replica_path:
      path = stage(state, spec, path)
    variables = state.model.trainable_variables
    before = [tf.identity(v) for v in variables] if state.probes.reads_before else None
    skipped = state.skipped.read_value()
    with tf.control_dependencies((before or []) + [skipped]):
      tf.distribute.get_replica_context().merge_call(
          _apply_if, args=(state, spec, path.grads, path.finite, path.overflow, stats))
    applied = path.finite & tf.equal(state.skipped.read_value(), skipped)  # Not undone either.
    mask = tf.fill(tf.shape(result.per_example), tf.cast(path.finite, tf.float32))
    state.train_metrics.update(result.outputs, batch, result.per_example, mask)
    state.probes.add(probes_lib.Step(
        state.model, batch, result.outputs, variables,
        optim.unscaled(state.optimizer, result.grads), before, spec.context(state)), applied)

  def next_batch(iterator):
    """The next batch, adding the seconds spent waiting for it to `input_wait`."""
    if op_determinism_enabled():  # tf.timestamp is refused under op determinism.
      return next(iterator)
    asked = tf.timestamp()
    with tf.control_dependencies([asked]):
      batch = next(iterator)
    local = tf.nest.flatten(strategy.experimental_local_results(batch))
    with tf.control_dependencies(local):
      state.input_wait.assign_add(tf.timestamp() - asked)
    return batch

  @tf.function
  def train_loop(iterator, num_steps):
    for _ in tf.range(num_steps):
      strategy.run(step_fn, args=(next_batch(iterator),))
      state.step.assign_add(1)

  return train_loop


# --- the gradient path: replica stages, then the update's stages ---------------------


class Gradients(NamedTuple):
  """What the replica stages pass along: this replica's gradients and the verdicts."""
  grads: list              # one per trainable variable (None: not trained)
  loss: Any                # the replica's loss, checked with them
  finite: Any = None       # bool: the loss and every replica's gradients are finite
  overflow: Any = None     # bool: mixed_float16's loss scale overflowed (not a bad step)


def scale_by_rules(state, spec, path):
  """Multiplies each gradient by its rule's lr_scale."""
  del state
  return path._replace(grads=[g if scale == 1.0 or g is None else g * scale
                              for g, scale in zip(path.grads, spec.grad_scales)])


def check_finite(state, spec, path):
  """Whether the step can be applied, the same on every replica: checked on each and
  all-reduced, under mixed_float16 too, where the loss scale's own check would see only
  the first replica's un-reduced gradients."""
  loss_finite, finite = finiteness(path.loss, path.grads)
  # There a finite loss with non-finite gradients, at a scale above 1, is the scale's
  # overflow, not a bad step: the scale is halved and the step not counted.
  overflow = tf.constant(False)
  if spec.loss_scaling:
    overflow = loss_finite & ~finite & (optim.loss_scale(state.optimizer) > 1.0)
  return path._replace(finite=finite, overflow=overflow)


def accumulate(state, spec, path):
  """Adds this replica's gradients to its sums, unless the step is skipped; unscaled:
  an overflow halves the loss scale between the steps of one update."""
  del spec
  for total, g in zip(state.accumulation.sums, optim.unscaled(state.optimizer, path.grads)):
    if g is not None:
      total.assign_add(tf.where(path.finite, g, tf.zeros_like(g)))
  return path


@dataclasses.dataclass
class Update:
  """One update as the update stages see it, in cross-replica context."""
  strategy: Any
  state: Any
  spec: Any
  replica_grads: Callable  # (*args) -> a replica's gradients to apply, in replica context
  args: tuple              # the per-replica values `replica_grads` takes
  updated: list            # the trainable variables and the optimizer's
  before: list             # their values before the update
  stats: list              # the non-trainable variables' values before the step


def _trained(spec, count):
  """Indices of the variables this phase trains: the head alone in the head-only phase
  (not even weight decay moves the rest; accumulated gradients hold zeros for them)."""
  return set(spec.head) if spec.head_only else set(range(count))


def _hand_to_optimizer(state, spec, grads):
  """Applies one replica's `grads`: Keras all-reduces them across replicas, and
  LossScaleOptimizer unscales them (and raises its scale after enough finite steps)."""
  variables = state.model.trainable_variables
  trained = _trained(spec, len(variables))
  state.optimizer.apply_gradients([(g, v) for i, (g, v) in enumerate(zip(grads, variables))
                                   if g is not None and i in trained])


def apply_gradients(update):
  """Hands each replica's gradients to the optimizer."""
  update.strategy.extended.call_for_each_replica(
      lambda *a: _hand_to_optimizer(update.state, update.spec, update.replica_grads(*a)),
      args=update.args)


def transform_and_apply(update):
  """`apply_gradients` with the spec's gradient transforms applied first (see
  `transformed`), with the step context current."""
  state, spec = update.state, update.spec

  def replica(*args):
    with context_lib.active(spec.context(state)):
      grads = transformed(state, spec, update.replica_grads(*args))
    _hand_to_optimizer(state, spec, grads)
  update.strategy.extended.call_for_each_replica(replica, args=update.args)


def transformed(state, spec, grads):
  """One replica's gradients -> what it hands the optimizer, in replica context.

  The transforms see the gradient of the update whole: all-reduced, without the loss
  scale and before the rules' lr_scale (applied after them). The optimizer sums the
  replicas' gradients again, so the first replica hands the result and the others
  zeros; the optimizer's division by the loss scale undoes the multiplication here
  exactly (the scale is a power of two).
  """
  trained = _trained(spec, len(grads))
  present = [i for i, g in enumerate(grads) if g is not None and i in trained]
  replica = tf.distribute.get_replica_context()
  many = replica.num_replicas_in_sync > 1
  summed = [grads[i] for i in present]
  if many and summed:
    summed = replica.all_reduce(tf.distribute.ReduceOp.SUM, summed)
  full = [None] * len(grads)
  for i, g in zip(present, optim.unscaled(state.optimizer, summed)):
    full[i] = g
  full = spec.grad_transforms(full, state.model.trainable_variables)
  loss_scale, first = optim.loss_scale(state.optimizer), replica.replica_id_in_sync_group == 0
  out = [None] * len(grads)
  for i in present:
    g = tf.cast(full[i] * (spec.grad_scales[i] * loss_scale), grads[i].dtype)
    out[i] = tf.where(first, g, tf.zeros_like(g)) if many else g
  return out


def scale_updates(update):
  """Scales the updates of --backbone_lr_scale's variables, exactly: the update is
  linear in the learning rate."""
  variables = update.state.model.trainable_variables
  for i, scale in update.spec.update_scales:
    variables[i].assign(update.before[i] + scale * (variables[i] - update.before[i]))


def freeze(update):
  """Puts back the variables past their rule's steps (`train_steps`) after the update."""
  variables = update.state.model.trainable_variables
  for i, steps in update.spec.frozen_after:
    variables[i].assign(tf.where(update.state.step >= steps, update.before[i], variables[i]))


def keep_or_undo(update):
  """Keeps the update if every updated value is finite, and moves the weight averages
  (EMA or Lookahead); otherwise puts everything back and counts a skipped step."""
  state = update.state

  def keep():
    if state.ema is not None:
      state.ema.update()

  def undo():
    for variable, value in zip(update.updated, update.before):
      variable.assign(value)
    _skip(update.strategy, state, update.stats)

  tf.cond(tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in update.updated
                         if tf.as_dtype(v.dtype).is_floating]), keep, undo)


def _apply_if(strategy, state, spec, grads, finite, overflow, stats):
  """Applies the update only if `finite`, and keeps it only if the updated weights and
  optimizer slots are finite too; otherwise puts back the non-trainable variables
  (`stats`: their values before the step) and counts a skipped step. The loss scale's
  `overflow` is not counted: the scale is halved and the next step tries again.

  With --grad_accum_steps=K, an update is applied at every K-th step, from the mean
  gradient of those of its K steps that were finite: updates end at fixed steps, so one
  never spans the end of the head-only phase, whichever steps were skipped.

  The condition runs in cross-replica context: a cond inside the replica
  function may not contain the optimizer's cross-replica synchronization.
  """
  first = lambda value: strategy.experimental_local_results(value)[0]
  accumulation = state.accumulation

  def apply():
    if accumulation is None:
      _update(strategy, state, spec, stats, lambda g: g, (grads,))
    else:
      accumulation.count.assign_add(1)

  tf.cond(first(finite), apply, lambda: tf.cond(
      first(overflow), lambda: _lower_scale(strategy, state, stats),
      lambda: _skip(strategy, state, stats)))
  if accumulation is not None:
    def update_and_restart():
      _update(strategy, state, spec, stats, lambda: _mean_and_reset(state))
      accumulation.count.assign(0)
    last = (state.step + 1) % spec.grad_accum_steps == 0  # The step this call runs.
    tf.cond(last & (accumulation.count > 0), update_and_restart, lambda: None)


def _update(strategy, state, spec, stats, replica_grads, args=()):
  """Runs the spec's update stages on `replica_grads(*args)` of each replica (args:
  per-replica values)."""
  # Finite gradients can still overflow the weights (a huge learning rate): keep
  # the values before the update, to put back if any comes out non-finite.
  updated = list(state.model.trainable_variables) + list(state.optimizer.variables)
  update = Update(strategy, state, spec, replica_grads, args, updated,
                  [tf.identity(v) for v in updated], stats)
  for stage in spec.update_path:
    stage(update)


def _mean_and_reset(state):
  """Called per replica: the mean of its own accumulated gradients, then zeros; at the
  current loss scale, which the optimizer divides by."""
  accumulation = state.accumulation
  scale = optim.loss_scale(state.optimizer) / tf.cast(accumulation.count, tf.float32)
  mean = [total.read_value() * scale for total in accumulation.sums]
  with tf.control_dependencies(mean):
    resets = [total.assign(tf.zeros_like(total)) for total in accumulation.sums]
  with tf.control_dependencies(resets):
    return [tf.identity(m) for m in mean]


def _put_back_stats(strategy, state, stats):
  """Puts back the non-trainable variables' values of before the step; replicas held
  the same values then, so the first one's are everyone's."""
  for variable, value in zip(state.model.non_trainable_variables, stats):
    variable.assign(strategy.experimental_local_results(value)[0])


def _skip(strategy, state, stats):
  _put_back_stats(strategy, state, stats)
  state.skipped.assign_add(1)


def _lower_scale(strategy, state, stats):
  optim.lower_loss_scale(state.optimizer)
  _put_back_stats(strategy, state, stats)


def finiteness(loss, grads):
  """(loss finite, loss and `grads` finite) on every replica, the same on all replicas."""
  # A gradient's sum is NaN or infinite if any element is, or if the sum overflows
  # float32 (no usable update either): one pass over each gradient, not two.
  sums = [tf.reduce_sum(tf.cast(loss, tf.float32))]
  sums += [tf.reduce_sum(tf.cast(g, tf.float32)) for g in grads if g is not None]
  finite = tf.math.is_finite(tf.stack(sums))
  bad = tf.cast(tf.stack([~finite[0], ~tf.reduce_all(finite)]), tf.float32)
  replica = tf.distribute.get_replica_context()
  if replica is not None and replica.num_replicas_in_sync > 1:  # One all-reduce for both.
    bad = replica.all_reduce(tf.distribute.ReduceOp.SUM, bad)
  return bad[0] == 0, bad[1] == 0


def eval_step(state, spec, batch):
  """Outputs (with the spec's TTA) and per-example loss of one replica's eval batch."""
  outputs = predict.predict(state.model, batch["image"], spec.tta)
  return outputs, spec.loss(outputs, batch)


def make_eval_loop(state, spec, strategy):
  """`eval_loop(iterator, num_steps)`: adds each batch to `state.eval_metrics`."""

  def step_fn(batch):
    outputs, per_example = eval_step(state, spec, batch)
    state.eval_metrics.update(outputs, batch, per_example, batch["mask"])

  @tf.function
  def eval_loop(iterator, num_steps):
    for _ in tf.range(num_steps):
      strategy.run(step_fn, args=(next(iterator),))

  return eval_loop


class Runner:
  """The compiled train and eval loops of one state and spec, and what uses them."""

  def __init__(self, state, spec, strategy):
    averaged = [v.path for v in state.model.variables if v.aggregation == "mean"]
    if spec.jit_compile and averaged and isinstance(
        strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)):
      raise ConfigError(
          f"--jit_compile cannot compile this model under {type(strategy).__name__}: "
          f"{averaged[0]} (BatchNorm's moving statistics) is averaged over replicas, which "
          "TensorFlow cannot do inside the XLA-compiled pass. Drop --jit_compile (slower "
          "for convnets on CPU anyway) or train with --strategy=default")
    self.state, self.spec, self.strategy = state, spec, strategy
    self._train_loops = {}  # By phase: head_only or not, each traced on first use.
    self._eval_loops = {}  # By TTA, each traced on first use.
    self._gradients = None

  def train_loop(self, iterator, num_steps):
    """Runs `num_steps` steps of the current phase (calls must not cross a phase's end)."""
    head_only = bool(self.spec.freeze_steps) and (
        int(self.state.step.numpy()) < self.spec.freeze_steps)
    if head_only not in self._train_loops:
      spec = dataclasses.replace(self.spec, head_only=head_only)
      self._train_loops[head_only] = make_train_loop(self.state, spec, self.strategy)
    return self._train_loops[head_only](iterator, num_steps)

  def evaluate(self, split, global_batch_size, tta=None):
    """Metrics over every example of `split`, exactly once, with the weights that are
    evaluated and saved (EMA or Lookahead if on) and `tta` (default: the spec's)."""
    tta = self.spec.tta if tta is None else tta
    if tta not in self._eval_loops:
      spec = dataclasses.replace(self.spec, tta=tta)
      self._eval_loops[tta] = make_eval_loop(self.state, spec, self.strategy)
    num_classes = self.state.num_classes
    dataset = self.strategy.distribute_datasets_from_function(
        lambda ctx: data_lib.eval_dataset(split, global_batch_size, num_classes, ctx))
    with self.state.averaged_weights():
      self.state.eval_metrics.reset()
      self._eval_loops[tta](iter(dataset),
                            tf.constant(data_lib.eval_steps(len(split), global_batch_size)))
      return self.state.eval_metrics.result()

  def gradients(self, batch):
    """The step kind's gradients of one global batch (as the step scales them, summed
    over replicas, without the loss scale), without applying them; every model variable
    is put back after, bit for bit (BatchNorm statistics and generator states move in a
    forward pass; SAM's w + e - e rounds)."""
    if self._gradients is None:
      passes = bind(self.state, self.spec)

      def replica(b):
        with context_lib.active(self.spec.context(self.state)):
          result = self.spec.kind(self.state, passes, b)
        grads = optim.unscaled(self.state.optimizer, result.grads)
        return tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, [g * s for g, s in zip(grads, self.spec.grad_scales)])
      self._gradients = tf.function(lambda b: self.strategy.run(replica, args=(b,)))
    model = self.state.model
    saved = [tf.identity(v) for v in model.variables]
    dataset = self.strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(batch))
    grads = self.strategy.experimental_local_results(self._gradients(next(iter(dataset))))[0]
    for variable, value in zip(model.variables, saved):
      variable.assign(value)
    return grads


def op_determinism_enabled():
  # Public TF has only `enable_op_determinism`; the query and the off switch are internal.
  return _tf_config.is_op_determinism_enabled()
