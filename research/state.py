"""The training state: everything a run updates and checkpoints, built under the scope."""

import contextlib

import tensorflow as tf

from research import ema as ema_lib, metrics as metrics_lib, models, optim
from research import probes as probes_lib


class TrainState(tf.Module):
  """Model, optimizer, counters, weight averages and metric sums of one run.

  Built under `strategy.scope()`, with the optimizer's slots created before the first
  compiled call (lazy creation inside the replica function fails under Mirrored).
  """

  def __init__(self, config, strategy, class_names, eval_metrics=()):
    """`eval_metrics`: metric items evaluation adds for the hooks (confusion_matrix)."""
    super().__init__(name="train_state")
    self.num_classes = config.num_classes
    with strategy.scope():
      self.model = models.build(config)
      self.rules = optim.variable_rules(config, self.model)  # One per trainable variable.
      self.optimizer = optim.build(config, self.model, self.rules)
      self.optimizer.build(self.model.trainable_variables)
      counter = lambda name, dtype=tf.int64: tf.Variable(
          tf.zeros([], dtype), trainable=False, name=name,
          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      self.step = counter("global_step")
      self.skipped = counter("skipped_steps")  # Non-finite steps, not applied.
      self.rollbacks = counter("rollbacks")  # --on_nan=rollback's, each reseeding the data.
      self.input_wait = counter("input_wait", tf.float64)  # Seconds blocked on input.
      build = lambda extra=(): metrics_lib.build(config.metrics, config.num_classes,
                                                 class_names, extra)
      self.train_metrics = metrics_lib.Metrics(build())
      self.probes = probes_lib.Probes(config.probes, self.model)
      self.eval_metrics = metrics_lib.Metrics(build(tuple(eval_metrics)))
      self.ema = ema_lib.build(self.model, config)  # EMA or Lookahead weights, or None.
      self.accumulation = None
      if config.grad_accum_steps > 1:
        self.accumulation = Accumulation(self.model.trainable_variables)

  def checkpointed(self):
    """The trackables a checkpoint holds, by the names checkpoints have always used."""
    items = dict(model=self.model, optimizer=self.optimizer, step=self.step,
                 skipped=self.skipped, rollbacks=self.rollbacks)
    if self.ema is not None:
      items["ema"] = self.ema
    if self.accumulation is not None:
      # Under mixed_float16 its sums are of the loss without its scale, which older
      # checkpoints' "accumulation" included: a name of their own, not misread.
      unscaled = optim.scales_loss(self.optimizer)
      items["accumulation_unscaled" if unscaled else "accumulation"] = self.accumulation
    random = self.random_state()
    if random:
      items["random"] = random
    # The sums since the last log: the first log after a resume averages the same steps.
    items["train_metrics"] = self.train_metrics.variables()
    items["probes"] = self.probes.variables()
    return items

  def random_state(self):
    """The states of the model's random generators (Dropout's masks): among its
    variables but not its weights, so a checkpoint of the model alone misses them."""
    weights = {id(v) for v in self.model.weights}
    return [v for v in self.model.variables if id(v) not in weights]

  def averaged_weights(self):
    """Inside it, the model holds the weights that are evaluated and saved (EMA or
    Lookahead if on)."""
    return self.ema.swapped_in() if self.ema else contextlib.nullcontext()

  def loss_scale(self):
    """{"loss_scale": ...} under mixed_float16, else {}."""
    if not optim.scales_loss(self.optimizer):
      return {}
    return {"loss_scale": float(optim.loss_scale(self.optimizer).numpy())}

  def learning_rate(self):
    optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
    return float(optimizer.learning_rate)


class Accumulation(tf.Module):
  """Gradients summed over the steps of one update (--grad_accum_steps).

  Each replica adds its own gradients to its own copy (ON_READ variables); the update
  applies each replica's sum / N, and the optimizer's all-reduce adds the replicas.
  Keras' `gradient_accumulation_steps` cannot do this under MirroredStrategy: it puts
  the all-reduce inside a cond in replica context, which tf.distribute refuses.
  """

  def __init__(self, variables):
    super().__init__(name="accumulation")
    self.sums = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                             name="accumulated_gradient",
                             synchronization=tf.VariableSynchronization.ON_READ,
                             aggregation=tf.VariableAggregation.SUM) for v in variables]
    # Finite steps added since the last update (the same on every replica).
    self.count = tf.Variable(0, dtype=tf.int64, trainable=False, name="accumulated_steps",
                             aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
