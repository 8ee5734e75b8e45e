"""The outer loop: cadence of logs, evaluations, checkpoints and hooks.

The state (research/state.py) holds what a run updates; the compiled train and eval
loops (research/steps.py) run many steps per call over `tf.range`. Everything here is
Python between those calls.
"""

import contextlib
import dataclasses
import functools
import os
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import config as _tf_config  # pylint: disable=g-direct-tensorflow-import

from research import checkpoints, data as data_lib, distribute, files, hooks as hooks_lib
from research import footprint
from research import interrupts as interrupts_lib
from research import model_dir as model_dir_lib, models, optim
from research import plugins, steps, transfer
from research import precision as precision_lib
from research import summaries
from research.config import ConfigError
from research.state import TrainState
from research.summaries import Progress, Writers, format_seconds


PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: rerun the same command to resume.

# The newest run's training input, kept past its end: destroying a distributed
# iterator can wait a minute for its prefetching threads, after the final line.
# train.py then ends the process without destroying it; in-process, the next run does.
_LAST_INPUT = []


class Preempted(Exception):
  """SIGTERM/SIGINT arrived; a checkpoint of the current step has been saved."""


class NonFiniteError(RuntimeError):
  """Training produced non-finite steps and --on_nan gave up."""


class UselessRun(NonFiniteError):
  """The run reached its last step but trained on nothing useful (see `_uselessness`);
  its checkpoints and model.keras are kept for inspection, and its `result` here."""

  def __init__(self, message, result):
    super().__init__(message)
    self.result = result


@dataclasses.dataclass
class Result:
  step: int
  train_history: list  # [(step, metrics dict)]
  eval_history: list   # [(step, metrics dict)]

  @property
  def final_eval(self):
    return self.eval_history[-1][1] if self.eval_history else None


def train(config, strategy=None):
  """Trains `config` (validated) in `config.model_dir`, resuming if it holds a checkpoint.

  The chief holds the model dir's lock from before the data is read to the end.
  """
  plugins.validate(config)
  config = config.replace(model_dir=config.run_dir)
  strategy = strategy or distribute.make_strategy(config.strategy, config.cpu_devices,
                                                 config.cluster_resolver, config.port_base)
  config.validate_replicas(strategy.num_replicas_in_sync)
  chief = distribute.is_chief(strategy)
  with model_dir_lib.Lock(config.model_dir) if chief else contextlib.nullcontext():
    try:
      return _train(config, strategy, chief)
    except tf.errors.OpError as e:  # A vanished worker: one line, not a traceback.
      lost = distribute.lost_peer(e, strategy)
      if lost is None:
        raise
      raise lost from None


def _train(config, strategy, chief):
  # --- set-up: data, resolved config ---------------------------------------------
  data = data_lib.load(config)
  config = config.resolve(len(data.train), len(data.class_names))
  config = config.replace(precision=precision_lib.resolve(config.precision))
  changes = model_dir_lib.check_config(config)
  data_change = model_dir_lib.check_listing(config, data.listing)
  keras.mixed_precision.set_global_policy(config.precision)
  keras.utils.set_random_seed(config.seed)
  _set_op_determinism(config.deterministic)

  # --- model, optimizer, metrics, checkpoint: all under the strategy's scope ---
  hooks = hooks_lib.build(config)
  state = TrainState(config, strategy, data.class_names,
                     eval_metrics=[m for h in hooks for m in h.eval_metrics])
  _check_activations(config, state.model)
  runner = steps.Runner(state, steps.StepSpec.from_config(config, state.model, state.rules), strategy)
  with strategy.scope():
    # Every worker saves (saving is collective); only the chief's copy is kept, and
    # every worker restores from it (the model dir is on storage they share).
    ckpt_dir = os.path.join(config.model_dir, "checkpoints")
    scratch = None if chief else os.path.join(
        ckpt_dir, f"worker-{strategy.cluster_resolver.task_id}")
    ckpt = checkpoints.Checkpointer(ckpt_dir, config.keep_checkpoints, scratch=scratch,
                                    **state.checkpointed())
  if chief:
    _check_free_space(config.model_dir, ckpt.size())
  restored = ckpt.restore()
  start = int(state.step.numpy())
  if not restored:
    sample = data.train.sample(5000)  # airbench's 5,000, of every class.
    with data_lib.naming_bad_files(sample, lambda: np.arange(len(sample)),
                                   "initializing from the data"):
      initialized = models.init_from_data(state.model, lambda: sample.head(len(sample)))
    if initialized:
      logging.info("initialized from data: %s", ", ".join(initialized))
    # After the data's initialization: weights loaded from elsewhere take precedence.
    loaded = transfer.initialize(state.model, config, data.class_names, write=chief)
    if (initialized or loaded) and state.ema is not None:
      state.ema.reset()  # Average from the initialized weights, not the random ones.
    if config.on_nan == "rollback":
      ckpt.save(0)  # A rollback before the first checkpoint restarts from here.
  logging.info("%s strategy, %d replica(s); %d train / %s examples; %s",
               config.strategy, strategy.num_replicas_in_sync, len(data.train),
               "no evaluation" if data.eval is None else f"{len(data.eval)} {data.eval_name}",
               f"resumed at step {start} from {restored}" if restored else "from scratch")
  reading = data_lib.shard_reading(data.train, len(
      strategy.cluster_resolver.cluster_spec().job_tasks("worker"))
      if distribute.is_multi_worker(strategy) else 1)
  if reading:
    logging.info(reading)
  if restored and start >= config.train_steps:
    logging.info("the run is already finished (step %d of %d): its final model is written "
                 "again; a longer --epochs or --train_steps trains on", start,
                 config.train_steps)
  if data.eval is None:
    logging.info("no evaluation: --val_split=0 trains on every image and no "
                 "--eval_data_dir was given; the final model is saved for "
                 "scripts/evaluate.py")
  if changes:
    logging.info("config changed since the model dir's last run: %s", "; ".join(changes))
    if start:
      jump = model_dir_lib.schedule_jump(config, start // config.grad_accum_steps,
                                         lambda c, update: float(optim.schedule(c)(update)))
      if jump:
        logging.warning(jump)
  if data_change:
    logging.warning(data_change)
  if chief:
    model_dir_lib.record(config, start)
    model_dir_lib.record_listing(config, data.listing)
    files.write_json(os.path.join(config.model_dir, "classes.json"), data.class_names)

  if chief and start:
    # Events written after this checkpoint by a killed run would repeat steps.
    summaries.truncate_events(config.model_dir, start)
  writers = Writers(config.model_dir, enabled=chief)
  if start == 0:
    writers.text("config", "```\n" + config.to_json() + "\n```")

  def batches(from_step, seed):
    _LAST_INPUT.clear()  # A rollback's new input replaces the old one here.
    _LAST_INPUT.append(iter(strategy.distribute_datasets_from_function(
        lambda ctx: data_lib.train_dataset(data.train, config.replace(seed=seed), from_step,
                                           ctx))))
    return _LAST_INPUT[0]

  reseeded = lambda: config.seed + 1000 * int(state.rollbacks.numpy())  # By rollbacks.
  data_seed = reseeded()
  train_iter = batches(start, data_seed)

  def read_by(step, num):
    """The example ids the train call of steps step + 1.. step + num reads, and the
    prefetched ones after them (a bad file there can fail this call too)."""
    return data_lib.step_payloads(data.train, config.replace(seed=data_seed), step,
                                  min(step + num + config.steps_per_loop, config.train_steps))

  context = hooks_lib.HookContext(start, config, state, runner, data, writers, chief=chief,
                                  data_seed=data_seed)
  _call(hooks, "at_start", context)

  # --- the loop ----------------------------------------------------------------
  result = Result(start, [], [])
  began_run = time.perf_counter()
  progress = Progress(config.train_steps, start, config.steps_per_epoch)
  cadences = [config.log_every, config.eval_every, config.checkpoint_every]
  step, window_seconds, window_steps = start, 0.0, 0
  step_seconds = None  # Per step, from the last call; the first call also compiles.
  last_line = None  # When the last progress line was printed.
  skipped, tries = int(state.skipped.numpy()), 0
  agree = distribute.Agreement(strategy)  # Workers run the same calls, stop together.
  with interrupts_lib.Interrupts() as interrupts:
    if restored or config.on_nan == "rollback":
      interrupts.saved(start)
    while step < config.train_steps:
      num = min(config.steps_per_loop, config.train_steps - step,
                *(every - step % every for every in cadences),
                *([config.freeze_steps - step] if step < config.freeze_steps else []),
                *(n for n in (hooks_lib.steps_to_next(h, step) for h in hooks) if n))
      if step_seconds is None:
        num = 1  # Compiling: one step, timed apart from the others.
      elif config.loop_seconds:  # Short calls keep signals, logs and the ETA responsive.
        num = min(num, max(1, int(config.loop_seconds / step_seconds)))
      num = agree(0, num)[1]
      interrupts.running(step + num, num, step_seconds and num * step_seconds)
      began = time.perf_counter()
      with data_lib.naming_bad_files(data.train, functools.partial(read_by, step, num),
                                     f"in training after step {step}"):
        runner.train_loop(train_iter, tf.constant(num))
        before, step = step, int(state.step.numpy())  # Reading waits for the call.
      interrupts.finishing(step)
      elapsed = time.perf_counter() - began
      if step_seconds is None:
        logging.info("compiled the train loop and ran step %d in %s", step,
                     format_seconds(elapsed))
        progress.restart(step)
        state.input_wait.assign(0.0)
      else:
        window_seconds += elapsed
        window_steps += num
      step_seconds = elapsed / num  # After compiling, an over-estimate: calls start short.
      context.step = step
      if step == config.freeze_steps and before < step:
        logging.info("step %d: the head-only phase (--freeze_epochs) is over; every "
                     "variable trains from here", step)
        step_seconds = None  # The next call compiles the loop of the new phase.

      # Non-finite steps were not applied; --on_nan says what happens next.
      now_skipped = int(state.skipped.numpy())
      if now_skipped > skipped:
        message = (f"{now_skipped - skipped} non-finite step(s) in steps "
                   f"{before + 1}..{step}")
        if config.on_nan == "halt":
          raise NonFiniteError(f"{message}; halting (--on_nan=halt). "
                               + _kept_checkpoint(config, interrupts.saved_step))
        if config.on_nan == "rollback":
          tries += 1
          if tries > config.nan_retries:
            raise NonFiniteError(f"{message}; gave up after {config.nan_retries} "
                                 "rollbacks (--nan_retries)")
          # Counted in the checkpoints from here on: a resume reads the same data.
          rollbacks = state.rollbacks.numpy() + 1
          ckpt.restore()
          state.rollbacks.assign(rollbacks)
          step, skipped = int(state.step.numpy()), int(state.skipped.numpy())
          logging.warning("%s; rolled back to step %d%s, reseeding the data (try %d of %d)",
                          message, step, " (the initial weights)" if step == 0 else "",
                          tries, config.nan_retries)
          progress.restart(step)  # The pace of the steps from the restored one on.
          data_seed = context.data_seed = reseeded()
          train_iter = batches(step, data_seed)
          state.train_metrics.reset()
          state.probes.reset()
          window_seconds, window_steps = 0.0, 0
          state.input_wait.assign(0.0)
          continue
        logging.warning("%s skipped (--on_nan=skip)", message)
        skipped = now_skipped
      done = step == config.train_steps

      if step % config.log_every == 0 or done:
        metrics = state.train_metrics.result()
        state.train_metrics.reset()
        metrics.pop("examples")
        scalars = state.probes.result()  # Their means over the steps since the last log.
        state.probes.reset()
        if runner.spec.regularizers:  # Added to the loss the step differentiates, not to
          # the logged `loss`: here at the current weights.
          scalars["regularization"] = float(tf.add_n(
              [penalty(state.model) for penalty in runner.spec.regularizers]))
        images_per_second = None  # Unknown while only the compiling call has run.
        if window_steps:
          images_per_second = window_steps * config.batch_size / window_seconds
          scalars.update(images_per_second=images_per_second,
                         step_seconds=window_seconds / window_steps)
          if not steps.op_determinism_enabled():
            scalars["input_wait_fraction"] = float(state.input_wait.numpy()) / window_seconds
        state.input_wait.assign(0.0)
        window_seconds, window_steps = 0.0, 0
        result.train_history.append((step, metrics))
        context.train_metrics = metrics
        writers.scalars(writers.train, step, {
            **metrics, **scalars, "learning_rate": state.learning_rate(),
            "skipped_steps": skipped, **state.loss_scale()})
        logging.info(progress.line(step, images_per_second, metrics))
        last_line = time.perf_counter()
      elif window_steps and config.progress_seconds and (
          last_line is None or time.perf_counter() - last_line >= config.progress_seconds):
        # Between logs, on the console only: the pace and ETA, without metrics.
        logging.info(progress.line(step, window_steps * config.batch_size / window_seconds))
        last_line = time.perf_counter()

      if data.eval is not None and (step % config.eval_every == 0 or done):
        tta = "none" if config.tta_final_only and not done else config.tta
        with data_lib.naming_bad_files(data.eval, lambda: np.arange(len(data.eval)),
                                       f"evaluating at step {step}"):
          metrics = runner.evaluate(data.eval, config.global_eval_batch_size, tta)
        result.eval_history.append((step, metrics))
        context.eval_metrics, context.eval_tta = metrics, tta
        writers.scalars(writers.eval, step, metrics)
        logging.info("eval at step %d: %d %s examples%s | %s", step, metrics["examples"],
                     data.eval_name, f" (tta {tta})" if tta != "none" else "",
                     summaries.format_metrics(metrics))
        _call(hooks, "after_eval", context)

      _call([h for h in hooks if hooks_lib.due(h, step)], "on_step", context)

      # Read the signal list once: one arriving between the save and the raise
      # would otherwise stop the run with no checkpoint of this step. Any worker's
      # signal stops them all here.
      stopping = agree(interrupts.received[0] if interrupts.received else 0, 0)[0]
      if step % config.checkpoint_every == 0 or done or stopping:
        ckpt.save(step)
        interrupts.saved(step)
      writers.flush()
      if stopping and not done:
        raise Preempted(f"signal {stopping} at step {step}: checkpoint saved in "
                        f"{config.model_dir}; rerun the same command to resume")

  # --- the end: the model as a standalone file ----------------------------------
  result.step = step
  _call(hooks, "at_end", context)
  writers.flush()
  if chief:
    with state.averaged_weights():
      path = os.path.join(config.model_dir, "model.keras")
      try:
        with files.replacing(path) as tmp:
          state.model.save(tmp)
      except OSError as e:
        raise checkpoints.CheckpointError(
            f"saving {path} failed: {e.strerror or e}; the checkpoint of step {step} is "
            "kept: free some space and rerun the same command to save it") from None
  useless = _uselessness(config, step, int(state.skipped.numpy()), result.final_eval)
  if useless:
    raise UselessRun(useless, result)
  logging.info("done: step %d in %s", step, format_seconds(time.perf_counter() - began_run))
  return result


def _check_activations(config, model):
  """Refuses a training batch whose activations cannot fit in this machine's memory,
  before the first step runs out of it. Not on GPUs (their memory is another), nor
  under multi_worker (each worker's machine has its own)."""
  if config.strategy == "multi_worker" or tf.config.list_physical_devices("GPU"):
    return
  too_large = footprint.activations_error(config, model, config.batch_size)
  if too_large:
    raise ConfigError(too_large)


def _kept_checkpoint(config, saved_step):
  """What --on_nan=halt leaves: the newest checkpoint (every saved one is finite, as
  non-finite steps are never applied), or none yet."""
  if saved_step is None:
    return (f"No checkpoint has been saved yet (--checkpoint_every={config.checkpoint_every}"
            "): a rerun starts from scratch; try a lower --learning_rate, or "
            "--on_nan=rollback")
  return (f"The newest checkpoint in {config.model_dir}, of step {saved_step}, holds only "
          "finite weights: rerun with --on_nan=rollback to resume from it with reseeded "
          "data, or try a lower --learning_rate in a new --model_dir")


def _uselessness(config, step, skipped, final_eval):
  """Why a run that reached `step` trained on nothing useful, or None: its final
  evaluation is not finite, or it skipped more than --max_skipped_fraction of its steps."""
  reasons = []
  if skipped > config.max_skipped_fraction * step:
    reasons.append(f"{skipped} of its {step} steps ({skipped / step:.0%}) were skipped as "
                   f"non-finite (--max_skipped_fraction={config.max_skipped_fraction:g})")
  bad = [f"{name} {value}" for name, value in summaries.scalar_items(final_eval or {})
         if not np.isfinite(value)]
  if bad:
    reasons.append(f"its final evaluation is not finite ({', '.join(bad)})")
  if not reasons:
    return None
  retry = "" if config.on_nan == "rollback" else (
      " or --on_nan=rollback (which retries non-finite steps from the last checkpoint)")
  return (f"the run trained on nothing useful: {' and '.join(reasons)}. Its checkpoints "
          f"and model.keras in {config.model_dir} are kept for inspection; try a new "
          f"--model_dir with a lower --learning_rate (this run's: "
          f"{config.learning_rate:g}){retry}")


def _check_free_space(model_dir, checkpoint_bytes):
  """Warns when the disk cannot hold a new checkpoint beside the kept ones."""
  needed = 2 * checkpoint_bytes  # The new one is written before the oldest is deleted.
  free = checkpoints.free_bytes(model_dir)
  if free < needed:
    logging.warning("model dir %s has %s free; a checkpoint takes about %s and the next "
                    "is written before the oldest is deleted: the run will likely stop at "
                    "its first save", model_dir, checkpoints.megabytes(free),
                    checkpoints.megabytes(checkpoint_bytes))


def _set_op_determinism(enabled):
  """Process-wide, so set both ways: one process may run several configs (tests)."""
  if enabled:
    tf.config.experimental.enable_op_determinism()
  elif steps.op_determinism_enabled():
    _tf_config.disable_op_determinism()


def _call(hooks, event, context):
  for hook in hooks:
    if hook.chief_only and not context.chief:
      continue
    callback = getattr(hook, event)
    if callback is not None:
      callback(context)
