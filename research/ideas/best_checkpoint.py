"""Keeps the best model by an evaluation metric: best.keras in the model dir.

  --hooks=best_checkpoint(metric='accuracy')             (add the default hooks if wanted)
  --hooks="best_checkpoint(metric='loss', mode='min')"

After each evaluation that improves on the best so far (kept in best.json, so a
resumed run goes on comparing), the model, with its averaged weights if any, is saved
as best.keras. docs/EXTENDING.md walks through it.
"""

import json
import os

from research import files
from research.config import ConfigError
from research.hooks import HOOKS, Hook


@HOOKS.register("best_checkpoint")
def best_checkpoint(config, metric="accuracy", mode="max"):
  """best.keras and best.json after each evaluation that improves `metric` (mode: max/min)."""
  del config
  if mode not in ("max", "min"):
    raise ConfigError(f"best_checkpoint(mode={mode!r}): expected 'max' or 'min'")

  def after_eval(ctx):
    if metric not in ctx.eval_metrics:
      raise ConfigError(f"best_checkpoint(metric={metric!r}): the evaluation has "
                        f"{', '.join(sorted(ctx.eval_metrics))}")
    value, record = float(ctx.eval_metrics[metric]), os.path.join(ctx.config.model_dir,
                                                                  "best.json")
    if os.path.exists(record):
      with open(record) as f:
        best = json.load(f)[metric]
      if not (value > best if mode == "max" else value < best):
        return
    with ctx.state.averaged_weights(), files.replacing(
        os.path.join(ctx.config.model_dir, "best.keras")) as tmp:
      ctx.state.model.save(tmp)
    files.write_json(record, {"step": ctx.step, metric: value})
  return Hook(after_eval=after_eval, after=("evaluate",), chief_only=True)
