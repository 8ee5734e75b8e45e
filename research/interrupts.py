"""SIGINT and SIGTERM, answered at once even while a compiled call holds the main thread.

The first signal asks the loop to save and stop after the call that is running; the
loop checks `received` between calls. Python runs signal handlers only when the main
thread is back from TensorFlow, which can take minutes, so a watcher thread, woken
through `signal.set_wakeup_fd`, says at once what will happen. A second signal stops
the process there and then, keeping the last checkpoint.
"""

import os
import signal
import threading
import time

from absl import logging

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT: stopped at once, without saving.
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupts:
  """Context manager: installs the handlers and the watcher, and restores both.

  The loop tells it what it is doing (`running`) and what is saved (`saved`), so the
  messages can say how long the stop will take and what a second signal keeps.
  """

  def __init__(self):
    self.received = []  # Signal numbers, in order.
    self.saved_step = None
    self._block = (0, 0, None)  # (last step of the running call, its steps, its end)
    self._installed = {}

  def running(self, end_step, num_steps, expected_seconds=None):
    """A call of `num_steps` ending at `end_step` starts (None: its time is unknown)."""
    end = None if expected_seconds is None else time.monotonic() + expected_seconds
    self._block = (end_step, num_steps, end)

  def finishing(self, step):
    """The call has returned: its step's logs, evaluation, hooks and save run now."""
    self._block = (step, 0, None)

  def saved(self, step):
    self.saved_step = step

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self  # Signals reach only the main thread: leave them alone.
    read, write = os.pipe()
    os.set_blocking(write, False)
    self._pipe = (read, write)
    self._previous_fd = signal.set_wakeup_fd(write)
    for sig in SIGNALS:
      self._installed[sig] = signal.signal(sig, lambda signum, frame: None)
    self._watcher = threading.Thread(target=self._watch, name="interrupts", daemon=True)
    self._watcher.start()
    return self

  def __exit__(self, *exc):
    if not self._installed:
      return
    for sig, previous in self._installed.items():
      signal.signal(sig, previous)
    signal.set_wakeup_fd(self._previous_fd)
    os.close(self._pipe[1])  # The watcher reads end-of-file and returns.
    self._watcher.join()
    os.close(self._pipe[0])

  def _watch(self):
    while True:
      data = os.read(self._pipe[0], 64)
      if not data:
        return
      for signum in data:
        if signum in SIGNALS:
          self._on_signal(signal.Signals(signum))

  def _on_signal(self, sig):
    self.received.append(sig.value)
    kept = (f"the checkpoint of step {self.saved_step} is kept"
            if self.saved_step is not None else "no checkpoint has been saved yet")
    if len(self.received) == 1:
      end_step, num_steps, end = self._block
      if num_steps:
        left = ("it includes compiling" if end is None else
                f"about {max(0.0, end - time.monotonic()):.0f} s more")
        doing = f"after the current block of {num_steps} step(s) ({left}), then saving"
      else:
        doing = (f"once step {end_step}'s logging, evaluation and hooks are done, "
                 "then saving")
      logging.warning("%s: stopping %s a checkpoint of step %d; send it again (Ctrl-C) "
                      "to stop now without saving (%s)", sig.name, doing, end_step, kept)
      return
    logging.warning("%s again: stopping now without saving; %s. Rerun the same command "
                    "to %s", sig.name, kept,
                    "resume from it" if self.saved_step is not None else "start again")
    logging.flush()
    os._exit(INTERRUPTED_EXIT_CODE)  # pylint: disable=protected-access
