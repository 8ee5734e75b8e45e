"""The compiled training and evaluation steps, and the outer loop that drives them.

`Task` holds what the steps need (model, optimizer, loss, metrics) and builds two
tf.functions, each running many steps over `tf.range` per call. `train` is the
outer loop: cadence of logs, evaluations and checkpoints, all Python side effects.
"""

import contextlib
import dataclasses
import json
import os
import signal
import time

from absl import logging
import keras
import tensorflow as tf
from tensorflow.python.framework import config as _tf_config  # pylint: disable=g-direct-tensorflow-import

from research import checkpoints, data as data_lib, distribute, hooks as hooks_lib, losses
from research import models, optim, tta
from research import precision as precision_lib
from research import ema as ema_lib
from research.config import ConfigError
from research.metrics import Metrics
from research import summaries
from research.summaries import Progress, Writers, format_seconds


class Task:
  """Model, optimizer, loss and metrics; builds the compiled train and eval loops."""

  def __init__(self, config, strategy):
    self.config, self.strategy = config, strategy
    self.loss_fn = losses.LOSSES.get(config.loss)
    with strategy.scope():
      self.model = models.build(config)
      self.optimizer = optim.build(config)
      # Build the slots now, under the scope: lazy creation inside the compiled
      # replica function fails under MirroredStrategy.
      self.optimizer.build(self.model.trainable_variables)
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                              aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      # Steps whose loss or gradients were not finite (and were not applied).
      self.skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_steps",
                                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      # Seconds the compiled loop spent blocked on the input pipeline.
      self.input_wait = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="input_wait",
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      self.train_metrics, self.eval_metrics = Metrics(), Metrics()
      self.ema = ema_lib.build(self.model, config)  # EMA or Lookahead weights, or None.
    # Gradient multipliers: --bn_lr_scale on BatchNorm parameters (exact for SGD).
    self.grad_scales = [config.bn_lr_scale if v.name in optim.BATCHNORM_PARAMS else 1.0
                        for v in self.model.trainable_variables]
    # Variables that stop training after `config.whiten_bias_steps` steps.
    self.frozen_later = []
    if config.whiten_bias_epochs:
      self.frozen_later = models.whitening_biases(self.model)
      if not self.frozen_later:
        raise ConfigError(f"--whiten_bias_epochs: --model={config.model} has no "
                          "patch-whitening layer")
    self.train_loop = self._make_train_loop()
    self.eval_loop = self._make_eval_loop()

  def _gradients(self, images, labels):
    """Forward and backward pass of one replica's batch."""
    config, model = self.config, self.model
    with tf.GradientTape() as tape:
      logits = model(images, training=True)
      per_example = self.loss_fn(labels, logits, config)
      if config.inject_nan_step:  # Fault injection, to test --on_nan.
        per_example *= tf.where(self.step + 1 == config.inject_nan_step, float("nan"), 1.0)
      # Averaged over the GLOBAL batch: replicas' gradients are then summed.
      loss = tf.nn.compute_average_loss(per_example, global_batch_size=config.batch_size)
      if model.losses:
        loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
      scaled = self.optimizer.scale_loss(loss)  # Identity unless mixed_float16.
    grads = tape.gradient(scaled, model.trainable_variables)
    grads = [g if scale == 1.0 or g is None else g * scale
             for g, scale in zip(grads, self.grad_scales)]
    return logits, per_example, loss, grads

  def _make_train_loop(self):
    gradients = self._gradients
    if self.config.jit_compile:
      gradients = tf.function(gradients, jit_compile=True)

    def step_fn(images, labels):
      logits, per_example, loss, grads = gradients(images, labels)
      finite = self._all_finite(loss, grads)
      tf.distribute.get_replica_context().merge_call(self._apply_if, args=(grads, finite))
      self.train_metrics.update(labels, logits, per_example,
                                mask=tf.fill(tf.shape(per_example), tf.cast(finite, tf.float32)))

    def next_batch(iterator):
      """The next batch, adding the seconds spent waiting for it to `input_wait`."""
      if _op_determinism_enabled():  # tf.timestamp is refused under op determinism.
        return next(iterator)
      asked = tf.timestamp()
      with tf.control_dependencies([asked]):
        batch = next(iterator)
      local = tf.nest.flatten(self.strategy.experimental_local_results(batch))
      with tf.control_dependencies(local):
        self.input_wait.assign_add(tf.timestamp() - asked)
      return batch

    @tf.function
    def train_loop(iterator, num_steps):
      for _ in tf.range(num_steps):
        self.strategy.run(step_fn, args=next_batch(iterator))
        self.step.assign_add(1)

    return train_loop

  def _apply_if(self, strategy, grads, finite):
    """Applies the update only if `finite`; otherwise counts a skipped step.

    The condition runs in cross-replica context: a cond inside the replica
    function may not contain the optimizer's cross-replica synchronization.
    """
    def apply():
      frozen = [tf.identity(v) for v in self.frozen_later]
      # Keras all-reduces the gradients across replicas; LossScaleOptimizer
      # unscales them and skips the update if any is not finite.
      strategy.extended.call_for_each_replica(
          lambda g: self.optimizer.apply_gradients(zip(g, self.model.trainable_variables)),
          args=(grads,))
      frozen_now = self.step >= self.config.whiten_bias_steps
      for variable, value in zip(self.frozen_later, frozen):
        variable.assign(tf.where(frozen_now, value, variable))
      if self.ema is not None:
        self.ema.update()

    def skip():
      self.skipped.assign_add(1)

    tf.cond(strategy.experimental_local_results(finite)[0], apply, skip)

  def _all_finite(self, loss, grads):
    """Whether every replica's loss (and gradients) are finite, the same on all replicas.

    Under mixed_float16 scaled gradients overflow routinely and LossScaleOptimizer
    handles them; only a non-finite loss counts as a bad step there.
    """
    # A gradient's sum is NaN or infinite if any element is, or if the sum overflows
    # float32 (no usable update either): one pass over each gradient, not two.
    sums = [tf.reduce_sum(tf.cast(loss, tf.float32))]
    if self.config.precision != "mixed_float16":
      sums += [tf.reduce_sum(tf.cast(g, tf.float32)) for g in grads if g is not None]
    bad = 1.0 - tf.cast(tf.reduce_all(tf.math.is_finite(tf.stack(sums))), tf.float32)
    replica = tf.distribute.get_replica_context()
    if replica is not None and replica.num_replicas_in_sync > 1:
      bad = replica.all_reduce(tf.distribute.ReduceOp.SUM, bad)
    return bad == 0

  def _make_eval_loop(self):
    def step_fn(images, labels, mask):
      logits = tta.predict(self.model, images, self.config.tta)
      per_example = self.loss_fn(labels, logits, self.config)
      self.eval_metrics.update(labels, logits, per_example, mask)

    @tf.function
    def eval_loop(iterator, num_steps):
      for _ in tf.range(num_steps):
        self.strategy.run(step_fn, args=next(iterator))

    return eval_loop

  def loss_scale(self):
    """{"loss_scale": ...} under mixed_float16, else {}."""
    scale = getattr(self.optimizer, "dynamic_scale", None)
    return {} if scale is None else {"loss_scale": float(scale.numpy())}

  def learning_rate(self):
    optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
    return float(optimizer.learning_rate)

  def averaged_weights(self):
    """Inside it, the model holds the weights that are evaluated and saved (EMA or
    Lookahead if on)."""
    return self.ema.swapped_in() if self.ema else contextlib.nullcontext()

  def evaluate(self, split):
    """Metrics over every example of `split`, exactly once (EMA weights if on)."""
    with self.averaged_weights():
      return self._evaluate(split)

  def _evaluate(self, split):
    batch = self.config.global_eval_batch_size
    dataset = self.strategy.distribute_datasets_from_function(
        lambda ctx: data_lib.eval_dataset(split, batch, ctx))
    self.eval_metrics.reset()
    self.eval_loop(iter(dataset), tf.constant(data_lib.eval_steps(len(split), batch)))
    return self.eval_metrics.result()


PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: rerun the same command to resume.


class Preempted(Exception):
  """SIGTERM/SIGINT arrived; a checkpoint of the current step has been saved."""


class NonFiniteError(RuntimeError):
  """Training produced a non-finite loss or gradients and --on_nan gave up."""


@contextlib.contextmanager
def _preemption_signals():
  """Turns SIGTERM and SIGINT into a flag the loop checks between compiled calls."""
  received = []
  handler = lambda signum, frame: received.append(signum)
  previous = {}
  try:
    for sig in (signal.SIGTERM, signal.SIGINT):
      previous[sig] = signal.signal(sig, handler)
  except ValueError:  # Not the main thread: leave signals alone.
    pass
  try:
    yield received
  finally:
    for sig, old in previous.items():
      signal.signal(sig, old)


@dataclasses.dataclass
class Result:
  step: int
  train_history: list  # [(step, metrics dict)]
  eval_history: list   # [(step, metrics dict)]

  @property
  def final_eval(self):
    return self.eval_history[-1][1] if self.eval_history else None


def train(config, strategy=None):
  """Trains `config` (validated) in `config.model_dir`, resuming if it holds a checkpoint."""
  # --- set-up: strategy, data, resolved config --------------------------------
  strategy = strategy or distribute.make_strategy(config.strategy, config.cpu_devices)
  config.validate_replicas(strategy.num_replicas_in_sync)
  data = data_lib.load(config)
  config = config.resolve(len(data.train), len(data.class_names))
  config = config.replace(precision=precision_lib.resolve(config.precision))
  checkpoints.check_model_dir(config)
  keras.mixed_precision.set_global_policy(config.precision)
  keras.utils.set_random_seed(config.seed)
  _set_op_determinism(config.deterministic)
  chief = distribute.is_chief(strategy)
  if chief:
    os.makedirs(config.model_dir, exist_ok=True)
    config.save(os.path.join(config.model_dir, "config.json"))
    with open(os.path.join(config.model_dir, "classes.json"), "w") as f:
      json.dump(data.class_names, f)

  # --- model, optimizer, metrics, checkpoint: all under the strategy's scope ---
  task = Task(config, strategy)
  with strategy.scope():
    # Every worker saves (saving is collective); only the chief's copy is kept.
    ckpt_dir = os.path.join(config.model_dir, "checkpoints")
    if not chief:
      ckpt_dir = os.path.join(ckpt_dir, f"worker-{strategy.cluster_resolver.task_id}")
    ckpt = checkpoints.Checkpointer(ckpt_dir,
                                    config.keep_checkpoints, model=task.model,
                                    optimizer=task.optimizer, step=task.step,
                                    skipped=task.skipped,
                                    **({"ema": task.ema} if task.ema else {}))
  restored = ckpt.restore()
  start = int(task.step.numpy())
  if not restored:
    initialized = models.init_from_data(task.model, data.train.images[:5000])
    if initialized:
      logging.info("initialized from data: %s", ", ".join(initialized))
      if task.ema is not None:
        task.ema.reset()  # Average from the initialized weights, not the random ones.
  logging.info("%s strategy, %d replica(s); %d train / %d %s examples; %s",
               config.strategy, strategy.num_replicas_in_sync, len(data.train),
               len(data.eval), data.eval_name,
               f"resumed at step {start} from {restored}" if restored else "from scratch")

  if chief and start:
    # Events written after this checkpoint by a killed run would repeat steps.
    summaries.truncate_events(config.model_dir, start)
  writers = Writers(config.model_dir, enabled=chief)
  if start == 0:
    writers.text("config", "```\n" + config.to_json() + "\n```")

  def batches(from_step, seed):
    return iter(strategy.distribute_datasets_from_function(
        lambda ctx: data_lib.train_dataset(data.train, config.replace(seed=seed), from_step,
                                           ctx)))

  train_iter = batches(start, config.seed)

  hooks = hooks_lib.build(config)
  context = hooks_lib.HookContext(start, config, task, data, writers, chief=chief)
  _call(hooks, "at_start", context)

  # --- the loop ----------------------------------------------------------------
  result = Result(start, [], [])
  progress = Progress(config.train_steps, start, config.steps_per_epoch)
  cadences = [config.log_every, config.eval_every, config.checkpoint_every]
  step, window_seconds, window_steps = start, 0.0, 0
  skipped, rollbacks = int(task.skipped.numpy()), 0
  logged_weights = _snapshot(task.model.trainable_variables)
  with _preemption_signals() as signals:
    while step < config.train_steps:
      num = min(config.steps_per_loop, config.train_steps - step,
                *(every - step % every for every in cadences),
                *(n for n in (hooks_lib.steps_to_next(h, step) for h in hooks) if n))
      began = time.perf_counter()
      task.train_loop(train_iter, tf.constant(num))
      before, step = step, int(task.step.numpy())  # Reading waits for the call.
      window_seconds += time.perf_counter() - began
      window_steps += num
      context.step = step

      # Non-finite steps were not applied; --on_nan says what happens next.
      now_skipped = int(task.skipped.numpy())
      if now_skipped > skipped:
        message = (f"{now_skipped - skipped} non-finite step(s) in steps "
                   f"{before + 1}..{step}")
        if config.on_nan == "halt":
          raise NonFiniteError(f"{message}; halting (--on_nan=halt). The checkpoints "
                               f"in {config.model_dir} hold only finite weights.")
        if config.on_nan == "rollback":
          rollbacks += 1
          if rollbacks > config.nan_retries:
            raise NonFiniteError(f"{message}; gave up after {config.nan_retries} "
                                 "rollbacks (--nan_retries)")
          ckpt.restore()
          step, skipped = int(task.step.numpy()), int(task.skipped.numpy())
          logging.warning("%s; rolled back to step %d, reseeding the data (try %d of %d)",
                          message, step, rollbacks, config.nan_retries)
          train_iter = batches(step, config.seed + 1000 * rollbacks)
          task.train_metrics.reset()
          window_seconds, window_steps = 0.0, 0
          task.input_wait.assign(0.0)
          logged_weights = _snapshot(task.model.trainable_variables)
          continue
        logging.warning("%s skipped (--on_nan=skip)", message)
        skipped = now_skipped
      done = step == config.train_steps

      if step % config.log_every == 0 or done:
        metrics = task.train_metrics.result()
        task.train_metrics.reset()
        metrics.pop("examples")
        images_per_second = window_steps * config.batch_size / window_seconds
        timing = {"images_per_second": images_per_second,
                  "step_seconds": window_seconds / window_steps,
                  "weight_norm": float(tf.linalg.global_norm(task.model.trainable_variables)),
                  # Norm of the sum of the updates since the last log.
                  "update_norm": float(tf.linalg.global_norm(
                      [v - w for v, w in zip(task.model.trainable_variables, logged_weights)]))}
        logged_weights = _snapshot(task.model.trainable_variables)
        if not _op_determinism_enabled():
          timing["input_wait_fraction"] = float(task.input_wait.numpy()) / window_seconds
        task.input_wait.assign(0.0)
        window_seconds, window_steps = 0.0, 0
        result.train_history.append((step, metrics))
        context.train_metrics = metrics
        writers.scalars(writers.train, step, {
            **metrics, **timing, "learning_rate": task.learning_rate(),
            "skipped_steps": skipped, **task.loss_scale()})
        logging.info(progress.line(step, images_per_second, metrics))

      if step % config.eval_every == 0 or done:
        metrics = task.evaluate(data.eval)
        result.eval_history.append((step, metrics))
        context.eval_metrics = metrics
        writers.scalars(writers.eval, step,
                        {k: v for k, v in metrics.items() if k != "examples"})
        logging.info("eval at step %d: %d %s examples | loss %.4f accuracy %.4f top5 %.4f",
                     step, metrics["examples"], data.eval_name, metrics["loss"],
                     metrics["accuracy"], metrics["top5"])
        _call(hooks, "after_eval", context)

      _call([h for h in hooks if hooks_lib.due(h, step)], "on_step", context)

      if step % config.checkpoint_every == 0 or done or signals:
        ckpt.save(step)
      writers.flush()
      if signals and not done:
        raise Preempted(f"signal {signals[0]} at step {step}: checkpoint saved in "
                        f"{config.model_dir}; rerun the same command to resume")

  # --- the end: the model as a standalone file ----------------------------------
  result.step = step
  _call(hooks, "at_end", context)
  writers.flush()
  if chief:
    with task.averaged_weights():
      task.model.save(os.path.join(config.model_dir, "model.keras"))
  logging.info("done: step %d in %s", step,
               format_seconds(time.perf_counter() - progress.started))
  return result


def _snapshot(variables):
  return [tf.identity(v) for v in variables]


def _set_op_determinism(enabled):
  """Process-wide, so set both ways: one process may run several configs (tests)."""
  if enabled:
    tf.config.experimental.enable_op_determinism()
  elif _op_determinism_enabled():
    _tf_config.disable_op_determinism()


def _op_determinism_enabled():
  # Public TF has only `enable_op_determinism`; the query and the off switch are internal.
  return _tf_config.is_op_determinism_enabled()


def _call(hooks, event, context):
  for hook in hooks:
    if hook.chief_only and not context.chief:
      continue
    callback = getattr(hook, event)
    if callback is not None:
      callback(context)
