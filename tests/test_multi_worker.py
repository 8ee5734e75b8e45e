"""MultiWorkerMirroredStrategy: two worker processes on localhost, as two machines would;
a worker lost and a preemption, with the cluster read from TF_CONFIG and from Slurm's
variables.

Two workers and one process agree to the last bit of float32 after one step on some
CPUs and differ by one or two ulps on others (AVX2-only EPYC: 1.5e-8 after step 1,
while in-process MirroredStrategy with the same per-replica batch stays bitwise equal
to one process): each worker's kernels sum its half batch over its own threads. The
rounding grows with the steps (1e-4 in the weights by step 11 at this learning rate),
so the run is kept short enough to compare the weights tightly.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

from absl import flags
import numpy as np
import pytest
import tensorflow as tf

from research import config as config_lib, loop, plugins
from tests.conftest import ROOT

FLAGS = ["--dataset=synthetic", "--synthetic_examples=512", "--image_size=32",
         "--model=baseline_cnn", "--batch_size=32", "--train_steps=6", "--log_every=3",
         "--eval_every=6", "--precision=float32", "--learning_rate=0.05",
         "--schedule=constant", "--deterministic", "--hooks=none", "--checkpoint_every=2",
         # Not baseline_cnn's defaults (Adam, no augmentation): SGD keeps the two runs'
         # rounding differences within the tolerance below.
         "--optimizer=sgd", "--augment=crop,flip", "--weight_decay=5e-4"]


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _free_port_pair():
  """A port P with P + 1 free too: Slurm tasks on one node listen on consecutive ports."""
  for port in _free_ports(8):
    try:
      with socket.socket() as a, socket.socket() as b:
        a.bind(("localhost", port))
        b.bind(("localhost", port + 1))
      return port
    except OSError:
      continue
  raise RuntimeError("no two consecutive free ports")


def _train(model_dir, strategy, tf_config=None, env_vars=None, *extra):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env_vars or {}))
  env.pop("TF_CONFIG", None)
  if tf_config:
    env["TF_CONFIG"] = json.dumps(tf_config)
  return subprocess.Popen([sys.executable, "train.py", f"--strategy={strategy}",
                           f"--model_dir={model_dir}", *FLAGS, *extra], cwd=ROOT, env=env,
                          text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _train_here(model_dir):
  """The run of `train.py --strategy=default` on FLAGS (parsed and given the model's
  training defaults as train.py does), in this process: its TensorFlow is loaded."""
  values = flags.FlagValues()
  config_lib.define_flags(values)
  values(["train.py", "--strategy=default", f"--model_dir={model_dir}", *FLAGS])
  config = config_lib.from_flags(values).validate()
  config = config.with_model_defaults(plugins.model_defaults(config),
                                      config_lib.explicit_fields(values))
  return loop.train(plugins.validate(config.validate()))


def _slurm_workers(model_dir, port_base):
  """Two workers as `srun --ntasks=2` would start them on one node."""
  return [_train(model_dir, "multi_worker", None,
                 {"SLURM_PROCID": str(i), "SLURM_STEP_NUM_TASKS": "2",
                  "SLURM_STEP_NODELIST": "localhost", "SLURM_STEP_TASKS_PER_NODE": "2"},
                 "--cluster_resolver=slurm", f"--port_base={port_base}")
          for i in range(2)]


def _until(proc, text, log):
  """Reads `proc`'s log into `log` until a line has `text`."""
  for line in proc.stderr:
    log.append(line)
    if text in line:
      return line
  raise AssertionError(f"{text!r} never logged:\n" + "".join(log[-30:]))


def _losses(log):
  return [float(x) for x in re.findall(r"\| loss ([0-9.]+) accuracy", log)]


def _weights(model_dir):
  """The newest checkpoint's model and optimizer values, by checkpoint key."""
  reader = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
  return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
          if key.startswith(("model/", "optimizer/")) and key.endswith("VARIABLE_VALUE")}


def test_two_workers_train_like_one_process_and_fail_well(tmp_path):
  # One test, so that the uninterrupted two-worker run serves both halves.
  _two_workers_train_like_one_process(tmp_path)
  _a_lost_worker_ends_the_other_and_every_rerun_resumes_exactly(tmp_path,
                                                                tmp_path / "multi")


def _two_workers_train_like_one_process(tmp_path):
  workers = [f"localhost:{p}" for p in _free_ports(2)]
  procs = [_train(tmp_path / "multi", "multi_worker",
                  {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
           for i in range(2)]
  logs = [p.stderr.read() for p in procs]
  assert [p.wait(timeout=300) for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
  result = _train_here(tmp_path / "single")
  # As the log has them: the steps' losses (steps 3 and 6), then the evaluation's.
  single = [m["loss"] for _, m in result.train_history] + [result.final_eval["loss"]]

  # Both workers step together on the same global batches as one process would.
  assert _losses(logs[0]) == _losses(logs[1])
  assert len(_losses(logs[0])) == len(single) == 3
  for a, b in zip(_losses(logs[0]), single):
    assert abs(a - b) <= 1e-3 * max(1.0, abs(b))
  assert "eval at step 6: 51 validation examples" in logs[0]
  # Only the chief writes the run's files.
  assert (tmp_path / "multi" / "model.keras").exists()
  assert (tmp_path / "multi" / "checkpoints" / "ckpt-6.index").exists()
  # The same weights and optimizer slots to float32 rounding: a real difference between
  # the strategies (a gradient scaled by the worker count, another batch) is far larger.
  # On AVX-512 oneDNN sums a half batch in another order than the whole one: 6 steps
  # drift by up to about 3e-6 (6e-5 relative), which 1e-4 still tells from a real one.
  multi, one = _weights(tmp_path / "multi"), _weights(tmp_path / "single")
  assert multi.keys() == one.keys() and len(one) > 10
  for key, value in one.items():
    np.testing.assert_allclose(multi[key], value, rtol=1e-4, atol=1e-5, err_msg=key)


def _a_lost_worker_ends_the_other_and_every_rerun_resumes_exactly(tmp_path, reference):
  """`reference`: the model dir of an uninterrupted two-worker run of FLAGS."""
  # SIGKILL one worker: the other ends within a bounded time, naming it.
  run, port = tmp_path / "run", _free_port_pair()
  procs, log = _slurm_workers(run, port), []
  _until(procs[0], "step 3/6", log)
  procs[1].kill()
  killed = time.monotonic()
  rest = procs[0].stderr.read()
  assert procs[0].wait(timeout=60) == 69 and time.monotonic() - killed < 60, rest[-2000:]
  assert re.search(rf"error: lost worker 1 \(localhost:{port + 1}\): .*rerun every "
                   "worker's command", rest), rest[-2000:]

  # Rerun both, then SIGTERM both (a preemption): one checkpoint, exit 75 on both.
  procs, logs = _slurm_workers(run, port), [[], []]
  resumed = int(re.search(r"resumed at step (\d+)", _until(procs[0], "resumed at step",
                                                             logs[0])).group(1))
  # Once the loop runs (TensorFlow swallows a SIGTERM before its handler is set).
  _until(procs[0], "compiled the train loop", logs[0])
  for p in procs:
    p.send_signal(signal.SIGTERM)
  rests = [p.stderr.read() for p in procs]
  assert [p.wait(timeout=120) for p in procs] == [75, 75], rests[0][-2000:] + rests[1][-2000:]
  stopped = {int(s) for r in rests for s in re.findall(r"signal 15 at step (\d+)", r)}
  assert len(stopped) == 1 and (stopped_at := stopped.pop()) > resumed
  assert (run / "checkpoints" / f"ckpt-{stopped_at}.index").exists()
  assert not [d for d in os.listdir(run / "checkpoints") if d.startswith("worker-")]

  # The last rerun ends where an uninterrupted run does, to the bit.
  procs = _slurm_workers(run, port)
  logs = [p.stderr.read() for p in procs]
  assert [p.wait(timeout=300) for p in procs] == [0, 0], logs[0][-2000:]
  assert "resumed at step" in logs[0]
  ours, theirs = _weights(run), _weights(reference)
  assert ours.keys() == theirs.keys()
  for key, value in theirs.items():
    np.testing.assert_array_equal(ours[key], value, err_msg=key)


def test_slurm_outside_a_job_step_is_a_config_error(monkeypatch):
  from research import distribute  # pylint: disable=g-import-not-at-top
  from research.config import ConfigError  # pylint: disable=g-import-not-at-top
  for name in [n for n in os.environ if n.startswith("SLURM_")]:
    monkeypatch.delenv(name)
  with pytest.raises(ConfigError, match="--cluster_resolver=slurm: SLURM_PROCID not found"):
    distribute.make_strategy("multi_worker", cluster_resolver="slurm")
