"""A run that trained on nothing useful does not end like a good one."""

import os
import subprocess
import sys

import numpy as np
import pytest

from research import actions, loop
from research.config import ConfigError
from tests.conftest import ROOT


def test_the_share_of_skipped_steps_and_a_non_finite_evaluation_decide(make_config):
  config = make_config()  # --max_skipped_fraction=0.1
  useless = lambda skipped, final_eval=None, c=config: actions.uselessness(
      c, 20, skipped, final_eval)
  assert useless(2) is None and useless(2, {"loss": 0.5, "examples": 64}) is None
  assert "3 of its 20 steps (15%) were skipped as non-finite" in useless(3)
  assert "its final evaluation is not finite (loss nan)" in useless(0, {"loss": np.nan})
  assert useless(20, c=config.replace(max_skipped_fraction=1.0)) is None
  message = useless(3, {"loss": np.inf, "accuracy": 0.1})
  assert " and its final evaluation is not finite (loss inf)" in message
  assert message.endswith("kept for inspection; try a new --model_dir with a lower "
                          "--learning_rate (this run's: 0.05) or --on_nan=rollback (which "
                          "retries non-finite steps from the last checkpoint)")
  for bad in (-0.1, 1.5):
    with pytest.raises(ConfigError, match="--max_skipped_fraction must be in"):
      config.replace(max_skipped_fraction=bad).validate()


def test_too_many_skipped_steps_end_with_an_error_keeping_the_run(make_config):
  config = make_config(train_steps=6, inject_nan_step=4, checkpoint_every=3)  # 1 of 6.
  with pytest.raises(loop.UselessRun, match=r"1 of its 6 steps \(17%\) were skipped") as e:
    loop.train(config)
  assert e.value.result.step == 6
  assert os.path.exists(os.path.join(config.model_dir, "model.keras"))
  assert os.path.exists(os.path.join(config.model_dir, "checkpoints", "ckpt-6.index"))


def test_a_few_skipped_steps_still_finish(make_config):
  config = make_config(train_steps=12, inject_nan_step=4, steps_per_loop=6, log_every=6,
                       eval_every=12, checkpoint_every=12)  # 1 of 12: under 10%.
  assert loop.train(config).step == 12
  # Its input iterator outlives it, for train.py to exit without destroying it (that
  # can wait a minute for its prefetching threads); the next run replaces it.
  assert len(loop._LAST_INPUT) == 1  # pylint: disable=protected-access


def test_a_huge_learning_rate_ends_with_one_error_line(tmp_path):
  """The issue's run: a step or two applied, the rest skipped, the evaluation NaN."""
  model_dir = tmp_path / "run"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run(
      [sys.executable, "train.py", "--dataset=synthetic", "--synthetic_examples=128",
       "--image_size=16", "--model=resnet8", "--batch_size=16", "--train_steps=6",
       "--learning_rate=1e12", "--precision=float32", "--hooks=none",
       f"--model_dir={model_dir}"], cwd=ROOT, env=env, text=True, capture_output=True,
      timeout=300)
  errors = [line for line in proc.stderr.splitlines() if "error:" in line]
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert len(errors) == 1 and errors[0].startswith("error: the run trained on nothing "
                                                   "useful: "), proc.stderr[-3000:]
  assert "its final evaluation is not finite (loss nan" in errors[0]
  assert "done:" not in proc.stderr
  assert (model_dir / "model.keras").exists()
