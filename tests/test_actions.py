"""The loop as a controller: its default actions, their order, and plugins among them."""

import glob
import json
import os
import time

import keras
import pytest

from research import hooks, loop
from research.config import ConfigError
from research.hooks import Hook

EVENTS = []


@hooks.HOOKS.register("test_recorder")
def _recorder(config, label="hooks"):
  """Records each event it gets: (label, event, step, and what the event carries)."""
  del config
  record = lambda event, what=lambda ctx: None: lambda ctx: EVENTS.append(
      (label, event, ctx.step, what(ctx)))
  return Hook(every=2, at_start=record("at_start"), at_end=record("at_end"),
              after_call=record("after_call", lambda ctx: (ctx.call.start, ctx.call.steps)),
              on_step=record("on_step", lambda ctx: ctx.train_metrics is not None),
              after_eval=record("after_eval", lambda ctx: ctx.eval_metrics["examples"]),
              after_rollback=record("after_rollback", lambda ctx: ctx.data_seed))


@hooks.HOOKS.register("test_no_checkpoints")
def _no_checkpoints(config):
  """Replaces `checkpoint`: records the steps it would save."""
  del config
  return Hook(after_call=lambda ctx: EVENTS.append(("no_checkpoints", ctx.step)))


def names(config):
  return [hook.name for hook in hooks.build(config)]


def test_the_default_actions_run_around_the_hooks_in_order(make_config):
  assert names(make_config(hooks="histograms,test_recorder")) == [
      "nan_policy", "log", "evaluate", "histograms", "test_recorder", "checkpoint",
      "save_model", "useless_run"]


def test_a_hook_runs_behind_the_ones_it_names_and_a_cycle_or_unknown_name_is_refused():
  order = lambda *specs: [h.name for h in hooks.order([Hook(name=n, after=a)
                                                        for n, a in specs])]
  assert order(("a", ("c",)), ("b", ()), ("c", ())) == ["b", "c", "a"]
  assert order(("a", ()), ("b", ("a",))) == ["a", "b"]  # Already behind: not moved.
  with pytest.raises(ConfigError, match="a cycle.*: a after b; b after a"):
    order(("a", ("b",)), ("b", ("a",)), ("c", ()))
  with pytest.raises(ConfigError, match="'a' runs after 'evaluate', which --actions and "
                     "--hooks do not name"):
    order(("a", ("evaluate",)), ("b", ()))


def test_actions_must_place_the_hooks_once(make_config):
  with pytest.raises(ConfigError, match="--actions='log,evaluate' must name 'hooks' once"):
    hooks.build(make_config(actions="log,evaluate"))
  with pytest.raises(ConfigError, match="--hooks names 'hooks'"):
    hooks.build(make_config(hooks="hooks"))
  with pytest.raises(ConfigError, match="unknown hook 'evaluat'"):
    hooks.build(make_config(actions="evaluat,hooks"))


def test_events_reach_every_action_in_order(make_config):
  EVENTS.clear()
  actions = "nan_policy,test_recorder(label='first'),log,evaluate,hooks,checkpoint"
  config = make_config(actions=actions, hooks="test_recorder", train_steps=6,
                       steps_per_loop=4, log_every=3, eval_every=4, checkpoint_every=6)
  result = loop.train(config)
  assert result.step == 6 and [s for s, _ in result.eval_history] == [4, 6]
  calls = [(step, what) for label, event, step, what in EVENTS
           if label == "hooks" and event == "after_call"]
  # A compiling call of one step, then calls cut at each multiple of 2, 3, 4 and 6.
  assert calls == [(1, (0, 1)), (2, (1, 1)), (3, (2, 1)), (4, (3, 1)), (6, (4, 2))]
  at_4 = [(label, event) for label, event, step, _ in EVENTS if step == 4]
  assert at_4 == [("first", "after_call"), ("first", "on_step"),
                  ("first", "after_eval"), ("hooks", "after_eval"),
                  ("hooks", "after_call"), ("hooks", "on_step")]
  assert EVENTS[0][:2] == ("first", "at_start") and EVENTS[-1][:2] == ("hooks", "at_end")
  # No save_model: a run whose --actions leave it out writes no model.keras.
  assert not os.path.exists(os.path.join(config.model_dir, "model.keras"))


def test_a_plugin_replaces_a_default_action(make_config):
  EVENTS.clear()
  config = make_config(actions="nan_policy,log,evaluate,hooks,test_no_checkpoints,"
                       "save_model,useless_run", train_steps=4, eval_every=4)
  loop.train(config)
  assert [step for label, step in EVENTS if label == "no_checkpoints"][-1] == 4
  assert not glob.glob(os.path.join(config.model_dir, "checkpoints", "ckpt-*"))
  assert os.path.exists(os.path.join(config.model_dir, "model.keras"))


def test_after_rollback_comes_with_the_restored_step_and_the_new_seed(make_config):
  EVENTS.clear()
  config = make_config(hooks="test_recorder", on_nan="rollback", inject_nan_step=5,
                       nan_retries=1, train_steps=6, checkpoint_every=3, log_every=3)
  with pytest.raises(loop.NonFiniteError, match="gave up after 1 rollbacks"):
    loop.train(config)
  rollbacks = [(step, seed) for _, event, step, seed in EVENTS if event == "after_rollback"]
  assert rollbacks == [(3, config.seed + 1000)]


def test_best_checkpoint_keeps_the_best_evaluation(make_config):
  config = make_config(hooks="best_checkpoint(metric='loss', mode='min')", train_steps=6,
                       eval_every=2)
  assert names(config).index("best_checkpoint") > names(config).index("evaluate")
  evaluations = loop.train(config).eval_history
  step, loss = min(((s, m["loss"]) for s, m in evaluations), key=lambda e: e[1])
  with open(os.path.join(config.model_dir, "best.json")) as f:
    assert json.load(f) == {"step": step, "loss": pytest.approx(loss)}
  model = keras.models.load_model(os.path.join(config.model_dir, "best.keras"))
  assert model.count_params() > 0
  with pytest.raises(ConfigError, match="best_checkpoint.*'evaluate', which --actions"):
    hooks.build(config.replace(actions="nan_policy,log,hooks,checkpoint"))
  with pytest.raises(ConfigError, match=r"best_checkpoint\(mode='top'\)"):
    hooks.HOOKS.build("best_checkpoint(mode='top')", config)


def test_an_order_error_stops_the_run_before_it_reads_anything(make_config):
  config = make_config(hooks="best_checkpoint").replace(
      actions="nan_policy,log,hooks,checkpoint")  # Not validated yet: loop.train does it.
  with pytest.raises(ConfigError, match="'best_checkpoint' runs after 'evaluate', which"):
    loop.train(config)
  assert not os.path.exists(config.model_dir)


@hooks.HOOKS.register("test_slow_figures")
def _slow_figures(config, seconds=1.0):
  """Sleeps after each evaluation, as a hook drawing a slow figure would."""
  del config
  return Hook(after_eval=lambda ctx: time.sleep(seconds))


def test_epoch_evaluations_wait_within_the_eval_budget(make_config):
  # Epochs of a few milliseconds, and evaluations of over a second.
  config = make_config(hooks="test_slow_figures(seconds=1.0)", batch_size=90,
                       train_steps=8, eval_every=0, checkpoint_every=8)
  every_epoch = config.replace(eval_budget=0.0, model_dir=config.model_dir + "_every")
  epochs = [s for s, _ in loop.train(every_epoch).eval_history]
  assert len(epochs) >= 4 and epochs[-1] == 8
  budgeted = [s for s, _ in loop.train(config).eval_history]
  assert budgeted == [epochs[0], 8]  # The first, then the last, which always runs.
  explicit = config.replace(eval_every=epochs[0], model_dir=config.model_dir + "_explicit")
  assert [s for s, _ in loop.train(explicit).eval_history] == epochs
