"""Hooks: the code that runs between compiled calls, registered by name.

The loop (research/loop.py) is a controller: it sizes each compiled call of the train
loop and, between calls, gives events to one ordered list of hooks. Its own work is
done by hooks too, the default actions of research/actions.py. `--actions` lists the
whole order, its item `hooks` standing for the `--hooks` list:

    --actions=nan_policy,log,evaluate,hooks,checkpoint,save_model,useless_run

A hook with `after=("evaluate",)` is moved behind the hooks of those names (the
smallest move; a cycle or an unknown name is a ConfigError when the loop builds the
list). Each event goes to every hook in that order, each with the `HookContext`
(`chief_only` hooks: in the process that writes files only):

    at_start        once per process, before its first call (also on resume)
    after_call      after every compiled call; then, in the same hook, `on_step`
    on_step         when the call ended at a multiple of `every` or at one of `at_steps`
    after_eval      sent by `evaluate` after each evaluation, before the hooks after it
                    see the step; `ctx.eval_metrics` holds it
    after_rollback  --on_nan=rollback restored a checkpoint (`ctx.step`): the call's
                    remaining after_call and on_step are skipped
    at_end          once, after the last step

So at each step: the NaN policy, the training log, the evaluation (its after_eval to
every hook), the --hooks, the checkpoint; at the end: the --hooks' at_end, model.keras,
the check that the run trained on something. Every hook runs on every worker (unless
chief_only), in Python between compiled calls, never inside them; the calls are cut so
that one ends at each step a hook's `every` or `at_steps` names.

    @HOOKS.register("kernel_norms")
    def kernel_norms(config, every=100):
      def log(ctx):
        norms = {f"kernel_norm/{v.path}": tf.norm(v)
                 for v in ctx.state.model.trainable_variables if v.name == "kernel"}
        ctx.writers.scalars(ctx.writers.train, ctx.step, norms)
      return Hook(every=every, on_step=log)
"""

import dataclasses
from typing import Any, Callable, Optional

from research.config import DEFAULT_ACTIONS, ConfigError
from research.registry import Registry

HOOKS = Registry("hook")
HOOKS_SLOT = "hooks"  # The item of --actions where the --hooks list runs.
EVENTS = ("at_start", "after_call", "on_step", "after_eval", "after_rollback", "at_end")


class Rollback(Exception):
  """Raised by an after_call that restored a checkpoint (ctx.step is its step): the
  loop skips the call's remaining events, restarts its input there (reseeded by
  `state.rollbacks`) and sends `after_rollback`."""


@dataclasses.dataclass(frozen=True)
class Call:
  """The compiled call that just ran: steps `start + 1`..`start + steps`."""
  start: int       # the step before it
  steps: int
  seconds: float   # its wall time
  compiling: bool  # it compiled the loop first: its time is not the pace


@dataclasses.dataclass
class HookContext:
  step: int
  config: Any          # the resolved research.config.Config
  state: Any           # research.state.TrainState: .model, .optimizer, .averaged_weights()
  runner: Any          # research.steps.Runner: .evaluate(split, batch), .gradients(batch)
  data: Any            # research.data.Data: .train, .eval, .class_names
  writers: Any         # research.summaries.Writers: .train, .eval, .scalars(...)
  train_metrics: Optional[dict] = None  # the latest logged training metrics
  eval_metrics: Optional[dict] = None   # the latest evaluation
  eval_tta: str = "none"                # its test-time augmentation (--tta_final_only:
                                        # "none" but at the end)
  chief: bool = True   # False on the other workers of a multi-worker run: skip side work
  data_seed: Optional[int] = None  # the training data's seed: --seed, or after
                                   # --on_nan=rollback's reseeding its new one
  # What the actions share (research/actions.py):
  call: Optional[Call] = None  # the call that just ran (after_call, on_step)
  skipped: int = 0             # non-finite steps skipped so far (kept by nan_policy)
  result: Any = None           # research.loop.Result: the logged and evaluated metrics
  checkpointer: Any = None     # research.checkpoints.Checkpointer of the model dir
  interrupts: Any = None       # research.interrupts.Interrupts: signals, the saved step
  agreement: Any = None        # research.distribute.Agreement: what every worker agrees on
  hooks: tuple = ()            # every hook, in order

  def emit(self, event):
    """Sends `event` (one of EVENTS) to every hook, in order."""
    dispatch(self.hooks, event, self)


@dataclasses.dataclass
class Hook:
  every: int = 0                       # steps between `on_step` calls (0: never)
  at_steps: tuple = ()                 # and/or these exact steps
  on_step: Optional[Callable] = None   # fn(ctx) every `every` steps and at `at_steps`
  at_start: Optional[Callable] = None  # fn(ctx) once, before the first step of this process
  after_eval: Optional[Callable] = None  # fn(ctx) after each evaluation
  at_end: Optional[Callable] = None    # fn(ctx) once, after the last step
  chief_only: bool = False             # run only in the process that writes files
  eval_metrics: tuple = ()             # metric items evaluation must add for this hook
  after_call: Optional[Callable] = None      # fn(ctx) after every compiled call
  after_rollback: Optional[Callable] = None  # fn(ctx) after --on_nan=rollback
  after: tuple = ()                    # names of the hooks this one runs behind
  name: str = ""                       # its registered name (set by `build`)


def due(hook, step):
  """Whether `on_step` runs after `step`."""
  return (hook.every and step % hook.every == 0) or step in hook.at_steps


def steps_to_next(hook, step):
  """Steps from `step` to the hook's next call (None: no more calls)."""
  ahead = [s - step for s in hook.at_steps if s > step]
  if hook.every:
    ahead.append(hook.every - step % hook.every)
  return min(ahead) if ahead else None


def dispatch(hooks, event, ctx):
  """Calls each hook's `event` callback with `ctx`, in order."""
  for hook in hooks:
    callback = getattr(hook, event)
    if callback is not None and (ctx.chief or not hook.chief_only):
      callback(ctx)


def dispatch_call(hooks, ctx):
  """After a compiled call: each hook's after_call, then its on_step if due, in order."""
  for hook in hooks:
    if hook.chief_only and not ctx.chief:
      continue
    if hook.after_call is not None:
      hook.after_call(ctx)
    if hook.on_step is not None and due(hook, ctx.step):
      hook.on_step(ctx)


@HOOKS.register(HOOKS_SLOT)
def hooks_slot(config):
  """In --actions: where the --hooks list runs."""
  del config
  return Hook()


def build(config):
  """The hooks of `config.actions`, the `--hooks` list in its `hooks` slot, each built
  with the config and its parameters, in their order (see the module docstring)."""
  actions = HOOKS.parse_list(config.actions)
  slots = [spec for spec in actions if spec.name == HOOKS_SLOT]
  if len(slots) != 1:
    raise ConfigError(f"--actions={config.actions!r} must name {HOOKS_SLOT!r} once: where "
                      f"the --hooks list runs (the default: {DEFAULT_ACTIONS})")
  hooks = HOOKS.parse_list(config.hooks)
  if any(spec.name == HOOKS_SLOT for spec in hooks):
    raise ConfigError(f"--hooks names {HOOKS_SLOT!r}, which belongs in --actions only")
  built = []
  for spec in actions:
    for item in (hooks if spec.name == HOOKS_SLOT else [spec]):
      hook = HOOKS.build(item, config)
      built.append(hook if hook.name else dataclasses.replace(hook, name=item.name))
  return order(built)


def order(hooks):
  """`hooks` in list order, each moved behind the hooks its `after` names (stable)."""
  names = {hook.name for hook in hooks}
  for hook in hooks:
    unknown = [name for name in hook.after if name not in names]
    if unknown:
      raise ConfigError(f"hook {hook.name!r} runs after {', '.join(map(repr, unknown))}, "
                        f"which --actions and --hooks do not name (they run: "
                        f"{', '.join(h.name for h in hooks)})")
  placed, left = [], list(hooks)
  while left:
    ready = next((h for h in left
                  if not any(o is not h and o.name in h.after for o in left)), None)
    if ready is None:
      raise ConfigError("hooks that each run after another (a cycle): " + "; ".join(
          f"{h.name} after {', '.join(h.after)}" for h in left if h.after))
    placed.append(ready)
    left = [h for h in left if h is not ready]
  return placed
