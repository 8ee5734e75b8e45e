"""The outer loop: a controller that sizes the compiled calls and gives events to the
actions and hooks between them.

The state (research/state.py) holds what a run updates; the compiled train and eval
loops (research/steps.py) run many steps per call over `tf.range`. Everything here is
Python between those calls: the set-up, the calls' lengths (up to the next step an
action or hook names, the head-only phase's end, --steps_per_loop and --loop_seconds),
and the events of research/hooks.py, whose order it documents. Logging, evaluation,
checkpoints and preemption, the NaN policy and the final save are the default actions
of research/actions.py.
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
from research import interrupts as interrupts_lib
from research import model_dir as model_dir_lib, models, optim
from research import plugins, sources, steps, transfer
from research import precision as precision_lib
from research import summaries
# Raised by the default actions; train.py and the tests read them here.
from research.actions import NonFiniteError, Preempted, UselessRun  # noqa: F401
from research.state import TrainState
from research.summaries import Writers, format_seconds


PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: rerun the same command to resume.

# The newest run's training input, kept past its end: destroying a distributed
# iterator can wait a minute for its prefetching threads, after the final line.
# train.py then ends the process without destroying it; in-process, the next run does.
_LAST_INPUT = []


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
  """Sets the run up, then runs compiled calls to the last step, giving the actions'
  events (research/hooks.py) between them; returns the Result."""
  data, config, changes = _load(config)
  actions = hooks_lib.build(config)
  state, runner, checkpointer = _build(config, strategy, chief, data, actions)
  restored = _restore_or_initialize(config, state, checkpointer, data, chief)
  start = int(state.step.numpy())
  _log_start(config, strategy, data, restored, start, changes)
  writers = _open_records(config, data, chief, start)
  train_input = _TrainInput(config, strategy, data, state, start)
  ctx = hooks_lib.HookContext(
      start, config, state, runner, data, writers, chief=chief,
      data_seed=train_input.seed, skipped=int(state.skipped.numpy()),
      result=Result(start, [], []), checkpointer=checkpointer,
      agreement=distribute.Agreement(strategy), hooks=tuple(actions))
  ctx.emit("at_start")
  began = time.perf_counter()
  with interrupts_lib.Interrupts() as interrupts:
    ctx.interrupts = interrupts
    if restored or config.on_nan == "rollback":
      interrupts.saved(start)
    _run_calls(config, actions, ctx, train_input)
  ctx.result.step = ctx.step
  ctx.emit("at_end")
  logging.info("done: step %d in %s", ctx.step, format_seconds(time.perf_counter() - began))
  return ctx.result


# --- the controller: compiled calls, and the actions' events between them ----------


def _run_calls(config, actions, ctx, train_input):
  """Compiled calls from `ctx.step` to the last step; after each, the actions."""
  step_seconds = None  # Per step, from the last call; None: the next call compiles.
  while ctx.step < config.train_steps:
    num = ctx.agreement.fewest_steps(_call_steps(config, actions, ctx.step, step_seconds))
    ctx.call = _train_call(ctx, train_input, num, step_seconds)
    if ctx.call.compiling:
      logging.info("compiled the train loop and ran step %d in %s", ctx.step,
                   format_seconds(ctx.call.seconds))
    # After compiling, an over-estimate: calls start short.
    step_seconds = ctx.call.seconds / num
    if ctx.step == config.freeze_steps and ctx.call.start < ctx.step:
      logging.info("step %d: the head-only phase (--freeze_epochs) is over; every "
                   "variable trains from here", ctx.step)
      step_seconds = None  # The next call compiles the loop of the new phase.
    size = config.image_size_at(ctx.step)
    if ctx.call.start < ctx.step < config.train_steps and size != config.image_size_at(
        ctx.step - 1):
      logging.info("step %d: training at %d px from here (%s)", ctx.step, size,
                   "the low-res phase, --low_res_epochs, is over"
                   if size == config.image_size else "the next --low_res_stages")
      train_input.restart(ctx.step)  # Same seed: the next phase's pipeline.
      step_seconds = None
    try:
      hooks_lib.dispatch_call(actions, ctx)
    except hooks_lib.Rollback:
      ctx.data_seed = train_input.restart(ctx.step)
      ctx.emit("after_rollback")


def _call_steps(config, actions, step, step_seconds):
  """Steps of the next call: up to the next step a hook (an action's cadence) or the
  end of the head-only or low-res phase names; one while compiling; about --loop_seconds
  long."""
  num = min(config.steps_per_loop, config.phase_end(step) - step,
            *([config.freeze_steps - step] if step < config.freeze_steps else []),
            *(n for n in (hooks_lib.steps_to_next(h, step) for h in actions) if n))
  if step_seconds is None:
    return 1  # Compiling: one step, timed apart from the others.
  if config.loop_seconds:  # Short calls keep signals, logs and the ETA responsive.
    num = min(num, max(1, int(config.loop_seconds / step_seconds)))
  return num


def _train_call(ctx, train_input, num, step_seconds):
  """Runs steps ctx.step + 1..ctx.step + num in one compiled call; moves ctx.step on."""
  start = ctx.step
  ctx.interrupts.running(start + num, num, step_seconds and num * step_seconds)
  began = time.perf_counter()
  with sources.naming_bad_files(ctx.data.train,
                                functools.partial(train_input.read_by, start, num),
                                f"in training after step {start}"):
    ctx.runner.train_loop(train_input.iterator, tf.constant(num))
    ctx.step = int(ctx.state.step.numpy())  # Reading waits for the call.
  ctx.interrupts.finishing(ctx.step)
  return hooks_lib.Call(start, num, time.perf_counter() - began,
                        compiling=step_seconds is None)


class _TrainInput:
  """The distributed training input from a step on, seeded by --seed and the rollbacks."""

  def __init__(self, config, strategy, data, state, step):
    self.config, self.strategy, self.data, self.state = config, strategy, data, state
    self.restart(step)

  def restart(self, step):
    """A new input from `step` to the end of its phase (after a rollback: reseeded);
    returns its seed."""
    self.seed = self.config.seed + 1000 * int(self.state.rollbacks.numpy())
    _LAST_INPUT.clear()  # A rollback's new input replaces the old one here.
    _LAST_INPUT.append(iter(self.strategy.distribute_datasets_from_function(
        lambda ctx: data_lib.train_dataset(self.data.train, self.config, step, ctx,
                                           seed=self.seed))))
    self.iterator = _LAST_INPUT[0]
    return self.seed

  def read_by(self, step, num):
    """The example ids the train call of steps step + 1.. step + num reads, and the
    prefetched ones after them (a bad file there can fail this call too)."""
    config = self.config
    return data_lib.step_payloads(self.data.train, config.batch_size, self.seed, step,
                                  min(step + num + config.steps_per_loop, config.train_steps))


# --- set-up ----------------------------------------------------------------------


def _load(config):
  """(data, the config resolved with it, the model dir's config and data changes)."""
  data = data_lib.load(config)
  config = config.resolve(len(data.train), len(data.class_names))
  config = config.replace(precision=precision_lib.resolve(config.precision))
  changes = (model_dir_lib.check_config(config),
             model_dir_lib.check_listing(config, data.listing))
  keras.mixed_precision.set_global_policy(config.precision)
  keras.utils.set_random_seed(config.seed)
  _set_op_determinism(config.deterministic)
  return data, config, changes


def _build(config, strategy, chief, data, actions):
  """(TrainState, steps.Runner, Checkpointer): model, optimizer, metrics, checkpoint,
  all under the strategy's scope."""
  state = TrainState(config, strategy, data.class_names,
                     eval_metrics=[m for h in actions for m in h.eval_metrics])
  runner = steps.Runner(state, steps.StepSpec.from_config(config, state.model, state.rules),
                        strategy)
  with strategy.scope():
    # Every worker saves (saving is collective); only the chief's copy is kept, and
    # every worker restores from it (the model dir is on storage they share).
    ckpt_dir = os.path.join(config.model_dir, "checkpoints")
    scratch = None if chief else os.path.join(
        ckpt_dir, f"worker-{strategy.cluster_resolver.task_id}")
    checkpointer = checkpoints.Checkpointer(ckpt_dir, config.keep_checkpoints,
                                            scratch=scratch, **state.checkpointed())
  if chief:
    _check_free_space(config.model_dir, checkpointer.size())
  return state, runner, checkpointer


def _restore_or_initialize(config, state, checkpointer, data, chief):
  """Restores the newest checkpoint (returns its path) or initializes a new run from
  the data and --weights/--init_from (returns None)."""
  restored = checkpointer.restore()
  if restored:
    return restored
  sample = data.train.sample(5000)  # airbench's 5,000, of every class.
  with sources.naming_bad_files(sample, lambda: np.arange(len(sample)),
                                "initializing from the data"):
    initialized = models.init_from_data(state.model, lambda: sample.head(len(sample)))
  if initialized:
    logging.info("initialized from data: %s", ", ".join(initialized))
  # After the data's initialization: weights loaded from elsewhere take precedence.
  loaded = transfer.initialize(state.model, config, data.class_names, write=chief)
  if (initialized or loaded) and state.ema is not None:
    state.ema.reset()  # Average from the initialized weights, not the random ones.
  if config.on_nan == "rollback":
    checkpointer.save(0)  # A rollback before the first checkpoint restarts from here.
  return None


def _log_start(config, strategy, data, restored, start, changes):
  """The run's first lines: strategy, data, where it starts, what changed since the
  model dir's last run."""
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
  _log_changes(config, start, *changes)


def _log_changes(config, start, config_changes, data_change):
  if config_changes:
    logging.info("config changed since the model dir's last run: %s",
                 "; ".join(config_changes))
    if start:
      jump = model_dir_lib.schedule_jump(config, start // config.grad_accum_steps,
                                         lambda c, update: float(optim.schedule(c)(update)))
      if jump:
        logging.warning(jump)
  if data_change:
    logging.warning(data_change)


def _open_records(config, data, chief, start):
  """Records the run in the model dir (chief) and returns its summary Writers."""
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
  return writers


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
