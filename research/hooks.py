"""Hooks: code that runs at loop points, registered by name and chosen by `--hooks`.

A hook builder takes the config (and its own parameters, `--hooks="name(every=10)"`)
and returns a `Hook`; the loop calls its callbacks
with a `HookContext` (step, config, state with model and optimizer, runner, data, writers,
latest metrics). Callbacks run in Python between compiled calls, never inside them.

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

from research.registry import Registry

HOOKS = Registry("hook")


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


def due(hook, step):
  """Whether `on_step` runs after `step`."""
  return (hook.every and step % hook.every == 0) or step in hook.at_steps


def steps_to_next(hook, step):
  """Steps from `step` to the hook's next call (None: no more calls)."""
  ahead = [s - step for s in hook.at_steps if s > step]
  if hook.every:
    ahead.append(hook.every - step % hook.every)
  return min(ahead) if ahead else None


def build(config):
  """The hooks `config.hooks` names, each built with the config and its parameters."""
  return [HOOKS.build(spec, config) for spec in HOOKS.parse_list(config.hooks)]
