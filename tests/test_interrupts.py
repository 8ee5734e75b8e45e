"""Ctrl-C and SIGTERM answer at once, a second one stops at once; calls stay short and
the pace shows early."""

import logging
import os
import signal
import subprocess
import sys
import threading

import tensorflow as tf

from research import interrupts, loop, steps
from tests.conftest import ROOT

# Holds the main thread inside TensorFlow (a dequeue nothing will ever feed), as a
# long compiled call does.
BLOCKED = """
import sys
sys.path.insert(0, {root!r})
import tensorflow as tf
from research import interrupts
queue = tf.queue.FIFOQueue(1, tf.string)
with interrupts.Interrupts() as watcher:
  {setup}
  print("ready", flush=True)
  queue.dequeue()
"""


def test_a_signal_is_answered_while_the_main_thread_is_inside_tensorflow():
  queue = tf.queue.FIFOQueue(2, tf.string)
  answered = []

  class Release(logging.Handler):  # What the watcher says lets the main thread go.
    def emit(self, record):
      answered.append(record.getMessage())
      queue.enqueue("answered")

  handler = Release(level=logging.WARNING)
  logging.getLogger("absl").addHandler(handler)
  timeout = threading.Timer(60, lambda: queue.enqueue("timed out"))
  timeout.start()
  try:
    with interrupts.Interrupts() as watcher:
      watcher.running(end_step=8, num_steps=3, expected_seconds=2.0)
      os.kill(os.getpid(), signal.SIGINT)
      released_by = queue.dequeue().numpy()  # Python handlers cannot run in here.
  finally:
    timeout.cancel()
    logging.getLogger("absl").removeHandler(handler)
  assert released_by == b"answered"
  assert watcher.received == [signal.SIGINT]
  assert "SIGINT: stopping after the current block of 3 step(s)" in answered[0]
  assert "checkpoint of step 8" in answered[0]
  assert "no checkpoint has been saved yet" in answered[0]


def _signalled_twice(setup):
  """(the first answer, what follows the second) of a process blocked after `setup`."""
  proc = subprocess.Popen([sys.executable, "-c", BLOCKED.format(root=ROOT, setup=setup)],
                          text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert proc.stdout.readline() == "ready\n"
  proc.send_signal(signal.SIGINT)
  for first in proc.stderr:
    if "send it again" in first:
      break
  proc.send_signal(signal.SIGINT)
  rest = proc.stderr.read()
  assert proc.wait(timeout=60) == interrupts.INTERRUPTED_EXIT_CODE
  return first, rest


def test_a_second_signal_stops_at_once_keeping_the_last_checkpoint():
  _, rest = _signalled_twice("watcher.saved(4); watcher.running(8, 4, 30.0)")
  assert "SIGINT again: stopping now without saving; the checkpoint of step 4 is kept. " \
      "Rerun the same command to resume from it" in rest


def test_a_signal_between_calls_names_the_step_being_finished_and_no_checkpoint():
  first, rest = _signalled_twice("watcher.running(8, 4, 30.0); watcher.finishing(8)")
  assert "SIGINT: stopping once step 8's logging, evaluation and hooks are done, then " \
      "saving a checkpoint of step 8" in first
  assert "no checkpoint has been saved yet. Rerun the same command to start again" in rest


def _calls(monkeypatch):
  """The step count of every compiled train call the loop makes."""
  counts, make = [], steps.make_train_loop

  def recording(*args):
    train_loop = make(*args)

    def call(iterator, num_steps):
      counts.append(int(num_steps))
      return train_loop(iterator, num_steps)
    return call
  monkeypatch.setattr(steps, "make_train_loop", recording)
  return counts


def test_calls_compile_on_one_step_then_stay_within_loop_seconds(make_config, monkeypatch,
                                                                  caplog):
  config = make_config(train_steps=6, steps_per_loop=6, log_every=6, eval_every=6,
                       checkpoint_every=6)
  counts = _calls(monkeypatch)
  with caplog.at_level(logging.INFO):
    loop.train(config.replace(loop_seconds=0.0))
  assert counts == [1, 5]
  assert "compiled the train loop and ran step 1 in" in caplog.text
  counts.clear()
  # Every step takes longer than 1e-9 s: one step per call.
  loop.train(config.replace(loop_seconds=1e-9, train_steps=12))
  assert counts == [1] * 6


def test_the_pace_shows_between_logs_as_soon_as_it_is_known(make_config, caplog):
  config = make_config(train_steps=6, steps_per_loop=1, log_every=6, eval_every=6,
                       checkpoint_every=6, progress_seconds=1e-9)
  with caplog.at_level(logging.INFO):
    loop.train(config)
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
  # Step 1 compiles (no pace yet); 2..5 show the pace without metrics; 6 is the log.
  assert [line.split("/")[0] for line in lines] == [f"step {i}" for i in range(2, 7)]
  assert all("img/s | ETA" in line and "loss" not in line for line in lines[:-1])
  assert "loss" in lines[-1]
