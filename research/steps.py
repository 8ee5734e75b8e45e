"""The training step: step kinds in a registry, and the compiled loops that run them.

A step kind computes one replica's gradients: `kind(state, forward_backward, batch) ->
Pass`, where `forward_backward(batch) -> Pass` is one pass at the current weights. The
`standard` kind is one forward and backward pass; others (SAM's two passes, see
research/ideas/sam.py) are one registered builder each. What happens after (the
finiteness check, the update, frozen variables, weight averaging, metric sums) is the
same for every kind, in `make_train_loop`.

Everything the compiled code reads is fixed before tracing in an immutable `StepSpec`
built from the config once; no Config is read inside compiled code, and a step can be
tested on one batch.
"""

import dataclasses
from typing import Any, Callable, NamedTuple

import tensorflow as tf
from tensorflow.python.framework import config as _tf_config  # pylint: disable=g-direct-tensorflow-import

from research import context as context_lib
from research import data as data_lib, losses, models, optim, predict, regularizers
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

  @classmethod
  def from_config(cls, config, model):
    rules = optim.variable_rules(config, model)
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
        total_steps=config.train_steps, steps_per_epoch=config.steps_per_epoch)

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
    grads = [g if scale == 1.0 or g is None else g * scale
             for g, scale in zip(result.grads, spec.grad_scales)]
    # Checked on every replica and all-reduced: under mixed_float16 too, where the loss
    # scale's own check would see only the first replica's un-reduced gradients.
    loss_finite, finite = finiteness(result.loss, grads)
    # There a finite loss with non-finite gradients, at a scale above 1, is the scale's
    # overflow, not a bad step: the scale is halved and the step not counted.
    overflow = tf.constant(False)
    if spec.loss_scaling:
      overflow = loss_finite & ~finite & (optim.loss_scale(state.optimizer) > 1.0)
    if state.accumulation is not None:  # This replica's share, unless the step is skipped.
      # Unscaled: an overflow halves the loss scale between the steps of one update.
      for total, g in zip(state.accumulation.sums, optim.unscaled(state.optimizer, grads)):
        if g is not None:
          total.assign_add(tf.where(finite, g, tf.zeros_like(g)))
    variables = state.model.trainable_variables
    before = [tf.identity(v) for v in variables] if state.probes.reads_before else None
    skipped = state.skipped.read_value()
    with tf.control_dependencies((before or []) + [skipped]):
      tf.distribute.get_replica_context().merge_call(
          _apply_if, args=(state, spec, grads, finite, overflow, stats))
    applied = finite & tf.equal(state.skipped.read_value(), skipped)  # Not undone either.
    mask = tf.fill(tf.shape(result.per_example), tf.cast(finite, tf.float32))
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
  variables = state.model.trainable_variables
  accumulation = state.accumulation

  first = lambda value: strategy.experimental_local_results(value)[0]

  def put_back_stats():
    # Replicas held the same values before the step: the first one's are everyone's.
    for variable, value in zip(state.model.non_trainable_variables, stats):
      variable.assign(first(value))

  def skipped():
    put_back_stats()
    state.skipped.assign_add(1)

  def lower_scale():
    optim.lower_loss_scale(state.optimizer)
    put_back_stats()

  def update(replica_grads, args=()):
    """Applies `replica_grads(*args)` of each replica (args: per-replica values)."""
    # Finite gradients can still overflow the weights (a huge learning rate): keep
    # the values before the update, to put back if any comes out non-finite.
    updated = list(variables) + list(state.optimizer.variables)
    before = [tf.identity(v) for v in updated]
    frozen = [(variables[i], steps, before[i]) for i, steps in spec.frozen_after]
    # Keras all-reduces the gradients across replicas; LossScaleOptimizer unscales
    # them (and raises its scale after enough finite steps).
    # The head-only phase updates the head alone: not even weight decay moves the rest
    # (accumulated gradients hold zeros, not None, for it).
    training = set(spec.head) if spec.head_only else set(range(len(variables)))
    strategy.extended.call_for_each_replica(
        lambda *a: state.optimizer.apply_gradients(
            [(g, v) for i, (g, v) in enumerate(zip(replica_grads(*a), variables))
             if g is not None and i in training]),
        args=args)
    for i, scale in spec.update_scales:  # Exact lr scaling: the update is linear in it.
      variables[i].assign(before[i] + scale * (variables[i] - before[i]))
    for variable, steps, value in frozen:  # Past its steps: put back after the update.
      variable.assign(tf.where(state.step >= steps, value, variable))

    def keep():
      if state.ema is not None:
        state.ema.update()

    def undo():
      for variable, value in zip(updated, before):
        variable.assign(value)
      skipped()

    tf.cond(tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in updated
                           if tf.as_dtype(v.dtype).is_floating]), keep, undo)

  def apply():
    if accumulation is None:
      update(lambda g: g, (grads,))
    else:
      accumulation.count.assign_add(1)

  tf.cond(first(finite), apply, lambda: tf.cond(first(overflow), lower_scale, skipped))
  if accumulation is None:
    return

  def mean_and_reset():  # Called per replica: its own sums, then zeros.
    # At the current loss scale, which the optimizer divides by.
    scale = optim.loss_scale(state.optimizer) / tf.cast(accumulation.count, tf.float32)
    mean = [total.read_value() * scale for total in accumulation.sums]
    with tf.control_dependencies(mean):
      resets = [total.assign(tf.zeros_like(total)) for total in accumulation.sums]
    with tf.control_dependencies(resets):
      return [tf.identity(m) for m in mean]

  def update_and_restart():
    update(mean_and_reset)
    accumulation.count.assign(0)

  last = (state.step + 1) % spec.grad_accum_steps == 0  # The step this call runs.
  tf.cond(last & (accumulation.count > 0), update_and_restart, lambda: None)


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


def all_finite(loss, grads):
  """Whether every replica's loss and `grads` are finite, the same on all replicas."""
  return finiteness(loss, grads)[1]


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
