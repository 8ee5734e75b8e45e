"""The console's progress line: the pace and ETA of this process's steps."""

from research import summaries
from research.config import Config


def _progress(monkeypatch, start_step):
  clock = [100.0]
  monkeypatch.setattr(summaries.time, "perf_counter", lambda: clock[0])
  return summaries.Progress(1000, start_step, 100), clock


def test_the_eta_counts_only_the_steps_since_this_process_started(monkeypatch):
  progress, clock = _progress(monkeypatch, 600)  # Resumed at step 600 of 1000.
  clock[0] += 40.0  # 20 steps at 2 s: 380 steps left, 760 s.
  assert "ETA 12m40s" in progress.line(620, 8.0)



def test_the_eta_weighs_the_cheap_steps_of_a_low_res_phase(monkeypatch):
  # Steps [0, 500) at half the side, a quarter of the pixels: 0.25 full steps each.
  config = Config(image_size=32, epochs=10, low_res_epochs=5, low_res_size=16,
                  batch_size=10).resolve(1000, 10)
  assert (config.low_res_steps, config.train_steps) == (500, 1000)
  clock = [100.0]
  monkeypatch.setattr(summaries.time, "perf_counter", lambda: clock[0])
  progress = summaries.Progress(1000, 0, 100, config.training_work)
  clock[0] += 50.0  # 400 low-res steps (100 full ones) in 50 s: 0.5 s a full step.
  assert "ETA 4m22s" in progress.line(400, 8.0)  # 100 x 0.25 + 500 full steps left.
