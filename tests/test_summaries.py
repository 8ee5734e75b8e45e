"""The console's progress line: the pace and ETA of this process's steps."""

from research import summaries


def _progress(monkeypatch, start_step):
  clock = [100.0]
  monkeypatch.setattr(summaries.time, "perf_counter", lambda: clock[0])
  return summaries.Progress(1000, start_step, 100), clock


def test_the_eta_counts_only_the_steps_since_this_process_started(monkeypatch):
  progress, clock = _progress(monkeypatch, 600)  # Resumed at step 600 of 1000.
  clock[0] += 40.0  # 20 steps at 2 s: 380 steps left, 760 s.
  assert "ETA 12m40s" in progress.line(620, 8.0)

