"""The loop's default actions: hooks that log, evaluate, checkpoint, apply the NaN policy,
save the final model and check that a run trained on something.

`--actions` (research/hooks.py) lists them in the order they run; a plugin's hook
replaces one there or joins them (docs/EXTENDING.md). They share what the
loop's HookContext holds: the call that ran, the skipped-step count, the result so far.
"""

import os
import time

from absl import logging
import numpy as np
import tensorflow as tf

from research import checkpoints, files, sources, steps, summaries
from research.hooks import HOOKS, Hook, Rollback, due
from research.summaries import Progress, format_seconds


class Preempted(Exception):
  """SIGTERM/SIGINT arrived; a checkpoint of the current step has been saved."""


class NonFiniteError(RuntimeError):
  """Training produced non-finite steps and --on_nan gave up."""


class UselessRun(NonFiniteError):
  """The run reached its last step but trained on nothing useful (see `uselessness`);
  its checkpoints and model.keras are kept for inspection, and its `result` here."""

  def __init__(self, message, result):
    super().__init__(message)
    self.result = result


# --- nan_policy ----------------------------------------------------------------


@HOOKS.register("nan_policy")
def nan_policy(config):
  """After a call with non-finite steps (never applied): --on_nan's skip, rollback, halt."""
  tries = 0  # Rollbacks so far in this process.

  def after_call(ctx):
    nonlocal tries
    now_skipped = int(ctx.state.skipped.numpy())
    if now_skipped == ctx.skipped:
      return
    message = (f"{now_skipped - ctx.skipped} non-finite step(s) in steps "
               f"{ctx.call.start + 1}..{ctx.step}")
    if config.on_nan == "halt":
      raise NonFiniteError(f"{message}; halting (--on_nan=halt). "
                           + _kept_checkpoint(config, ctx.interrupts.saved_step))
    if config.on_nan == "rollback":
      tries += 1
      _roll_back(config, ctx, message, tries)
    logging.warning("%s skipped (--on_nan=skip)", message)
    ctx.skipped = now_skipped
  return Hook(after_call=after_call)


def _roll_back(config, ctx, message, tries):
  """Restores the newest checkpoint, counting the rollback in it, and raises Rollback."""
  if tries > config.nan_retries:
    raise NonFiniteError(f"{message}; gave up after {config.nan_retries} "
                         "rollbacks (--nan_retries)")
  # Counted in the checkpoints from here on: a resume reads the same data.
  rollbacks = ctx.state.rollbacks.numpy() + 1
  ctx.checkpointer.restore()
  ctx.state.rollbacks.assign(rollbacks)
  ctx.step, ctx.skipped = int(ctx.state.step.numpy()), int(ctx.state.skipped.numpy())
  logging.warning("%s; rolled back to step %d%s, reseeding the data (try %d of %d)",
                  message, ctx.step, " (the initial weights)" if ctx.step == 0 else "",
                  tries, config.nan_retries)
  raise Rollback()


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


# --- log -----------------------------------------------------------------------


class _Log:
  """The training metrics, probes and pace every --log_every steps and at the end, to
  TensorBoard and the console; between logs, a progress line every --progress_seconds."""

  def __init__(self, config):
    self.config = config
    self.window_seconds, self.window_steps = 0.0, 0  # The calls since the last log.
    self.last_line = None  # When the last progress line was printed.
    self.progress = None
    self.hook = Hook(every=config.log_every, at_steps=(config.train_steps,),
                     at_start=self.at_start, after_call=self.after_call,
                     on_step=self.on_step, after_rollback=self.after_rollback)

  def at_start(self, ctx):
    self.progress = Progress(self.config.train_steps, ctx.step, self.config.steps_per_epoch,
                             self.config.training_work)

  def after_call(self, ctx):
    if ctx.call.compiling:
      self.progress.restart(ctx.step)
      ctx.state.input_wait.assign(0.0)
    else:
      self.window_seconds += ctx.call.seconds
      self.window_steps += ctx.call.steps
    if due(self.hook, ctx.step) or not self.window_steps:
      return
    if self.config.progress_seconds and (
        self.last_line is None
        or time.perf_counter() - self.last_line >= self.config.progress_seconds):
      # Between logs, on the console only: the pace and ETA, without metrics.
      logging.info(self.progress.line(ctx.step, self.window_steps * self.config.batch_size
                                      / self.window_seconds))
      self.last_line = time.perf_counter()

  def on_step(self, ctx):
    state = ctx.state
    metrics = state.train_metrics.result()
    state.train_metrics.reset()
    metrics.pop("examples")
    scalars = state.probes.result()  # Their means over the steps since the last log.
    state.probes.reset()
    if ctx.runner.spec.regularizers:  # Added to the loss the step differentiates, not to
      # the logged `loss`: here at the current weights.
      scalars["regularization"] = float(tf.add_n(
          [penalty(state.model) for penalty in ctx.runner.spec.regularizers]))
    images_per_second = self._pace(ctx, scalars)
    ctx.result.train_history.append((ctx.step, metrics))
    ctx.train_metrics = metrics
    ctx.writers.scalars(ctx.writers.train, ctx.step, {
        **metrics, **scalars, "learning_rate": state.learning_rate(),
        "skipped_steps": ctx.skipped, **state.loss_scale()})
    logging.info(self.progress.line(ctx.step, images_per_second, metrics))
    self.last_line = time.perf_counter()

  def _pace(self, ctx, scalars):
    """Images per second since the last log (None: only the compiling call has run),
    with the step time and input wait added to `scalars`; starts a new window."""
    images_per_second = None
    if self.window_steps:
      images_per_second = self.window_steps * self.config.batch_size / self.window_seconds
      scalars.update(images_per_second=images_per_second,
                     step_seconds=self.window_seconds / self.window_steps)
      if not steps.op_determinism_enabled():
        scalars["input_wait_fraction"] = (float(ctx.state.input_wait.numpy())
                                          / self.window_seconds)
    self._new_window(ctx)
    return images_per_second

  def _new_window(self, ctx):
    ctx.state.input_wait.assign(0.0)
    self.window_seconds, self.window_steps = 0.0, 0

  def after_rollback(self, ctx):
    """The metrics and the pace start again from the restored step."""
    self.progress.restart(ctx.step)
    ctx.state.train_metrics.reset()
    ctx.state.probes.reset()
    self._new_window(ctx)


@HOOKS.register("log")
def log(config):
  """Training metrics, probes and pace to TensorBoard and the console (--log_every)."""
  return _Log(config).hook


# --- evaluate ------------------------------------------------------------------


class _EvalBudget:
  """Spaces the periodic evaluations by time: one waits while the seconds spent
  evaluating (with the hooks after it), plus one more like the last, would pass
  --eval_budget's share of the seconds since training started."""

  def __init__(self, share):
    self.share, self.began, self.spent, self.last = share, None, 0.0, 0.0
    self.waited = False  # Said once a run, at the first evaluation that waits.

  def start(self, ctx):
    del ctx
    self.began = time.perf_counter()

  def allows(self, step):
    if not self.share or not self.last:
      return True
    elapsed = time.perf_counter() - self.began
    if self.spent + self.last <= self.share * elapsed:
      return True
    if not self.waited:
      logging.info("step %d: the evaluation waits: evaluations took %s of the %s since "
                   "training started; each waits until it fits in --eval_budget=%g of "
                   "the time (the last always runs)", step, format_seconds(self.spent),
                   format_seconds(elapsed), self.share)
      self.waited = True
    return False

  def add(self, seconds):
    self.spent, self.last = self.spent + seconds, seconds


@HOOKS.register("evaluate")
def evaluate(config):
  """Evaluates the eval split every --eval_every steps (within --eval_budget) and at the
  end, then sends after_eval to every hook."""
  budget = _EvalBudget(config.eval_budget)

  def run(ctx):
    final = ctx.step == config.train_steps
    if ctx.data.eval is None or not (final or budget.allows(ctx.step)):
      return
    began = time.perf_counter()
    tta = "none" if config.tta_final_only and not final else config.tta
    with sources.naming_bad_files(ctx.data.eval, lambda: np.arange(len(ctx.data.eval)),
                                  f"evaluating at step {ctx.step}"):
      metrics = ctx.runner.evaluate(ctx.data.eval, config.global_eval_batch_size, tta)
    ctx.result.eval_history.append((ctx.step, metrics))
    ctx.eval_metrics, ctx.eval_tta = metrics, tta
    ctx.writers.scalars(ctx.writers.eval, ctx.step, metrics)
    logging.info("eval at step %d: %d %s examples%s | %s", ctx.step, metrics["examples"],
                 ctx.data.eval_name, f" (tta {tta})" if tta != "none" else "",
                 summaries.format_metrics(metrics))
    ctx.emit("after_eval")
    budget.add(time.perf_counter() - began)
  return Hook(every=config.eval_every, at_steps=(config.train_steps,), on_step=run,
              at_start=budget.start)


# --- checkpoint ----------------------------------------------------------------


@HOOKS.register("checkpoint")
def checkpoint(config):
  """Saves a checkpoint every --checkpoint_every steps, at the end, and when any worker
  got SIGTERM/SIGINT (then raises Preempted); flushes the summaries after each call."""
  cadence = Hook(every=config.checkpoint_every, at_steps=(config.train_steps,))

  def after_call(ctx):
    # Read the signal list once: one arriving between the save and the raise would
    # otherwise stop the run with no checkpoint of this step. Any worker's signal
    # stops them all here.
    received = ctx.interrupts.received
    stopping = ctx.agreement.largest_signal(received[0] if received else 0)
    done = ctx.step == config.train_steps
    if due(cadence, ctx.step) or stopping:
      ctx.checkpointer.save(ctx.step)
      ctx.interrupts.saved(ctx.step)
    ctx.writers.flush()
    if stopping and not done:
      raise Preempted(f"signal {stopping} at step {ctx.step}: checkpoint saved in "
                      f"{config.model_dir}; rerun the same command to resume")
  return Hook(every=config.checkpoint_every, after_call=after_call)


# --- save_model and useless_run: the end ----------------------------------------


@HOOKS.register("save_model")
def save_model(config):
  """At the end: model.keras in the model dir, with the averaged weights if any."""
  def save(ctx):
    ctx.writers.flush()
    with ctx.state.averaged_weights():
      path = os.path.join(config.model_dir, "model.keras")
      try:
        with files.replacing(path) as tmp:
          ctx.state.model.save(tmp)
      except OSError as e:
        raise checkpoints.CheckpointError(
            f"saving {path} failed: {e.strerror or e}; the checkpoint of step {ctx.step} "
            "is kept: free some space and rerun the same command to save it") from None
  return Hook(at_end=save, chief_only=True)


@HOOKS.register("useless_run")
def useless_run(config):
  """At the end: raises UselessRun if the run trained on nothing useful."""
  def check(ctx):
    useless = uselessness(config, ctx.step, int(ctx.state.skipped.numpy()),
                          ctx.result.final_eval)
    if useless:
      raise UselessRun(useless, ctx.result)
  return Hook(at_end=check)


def uselessness(config, step, skipped, final_eval):
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
