"""--precision=auto: the policy follows the hardware, and the run records what it chose."""

import json
import os
import subprocess
import sys

from absl import logging
import pytest

from research import loop, precision

AMX = frozenset({"avx2", "avx512f", "amx_bf16", "amx_tile"})
AVX512_BF16 = frozenset({"avx2", "avx512f", "avx512_bf16"})
AVX2 = frozenset({"avx2", "fma"})


@pytest.mark.parametrize("gpus, flags, expected", [
    ([], AMX, "mixed_bfloat16"),
    ([], AVX512_BF16, "float32"),  # Native, but slower than float32 without AMX.
    ([], AMX | AVX512_BF16, "mixed_bfloat16"),
    ([], AVX2, "float32"),
    ([], frozenset(), "float32"),
    ([(8, 0)], AVX2, "mixed_bfloat16"),
    ([(7, 5)], AMX, "mixed_float16"),          # A GPU's choice wins over the CPU's.
    ([(9, 0), (7, 0)], AVX2, "mixed_float16"),  # The oldest GPU decides.
])
def test_choice_follows_the_hardware(gpus, flags, expected):
  policy, reason = precision.choose(gpus, flags)
  assert policy == expected
  assert reason


def test_cpu_flags_read_the_first_flags_line(tmp_path):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n"
                     "processor\t: 1\nflags\t\t: fpu\n")
  assert precision.cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "amx_bf16"}
  assert precision.cpu_flags(str(tmp_path / "missing")) == frozenset()


@pytest.mark.parametrize("setting, expected", [(None, "True"), ("0", "False")])
def test_importing_research_first_turns_on_onednn_unless_opted_out(setting, expected):
  # TensorFlow itself turns oneDNN on only on AVX-512/AMX CPUs; importing `research`
  # first turns it on everywhere (the AVX2 speed-up), and TF_ENABLE_ONEDNN_OPTS=0 wins.
  env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
  if setting is not None:
    env["TF_ENABLE_ONEDNN_OPTS"] = setting
  code = "import research, research.precision as p; print(p.onednn_enabled())"
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       check=True).stdout
  assert out.strip().splitlines()[-1] == expected


def test_explicit_bf16_without_native_support_warns(monkeypatch):
  monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2)
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))
  assert precision.resolve("mixed_bfloat16") == "mixed_bfloat16"
  assert len(warnings) == 1 and "several times slower" in warnings[0]
  assert "--precision=auto" in warnings[0]
  monkeypatch.setattr(precision, "cpu_flags", lambda: AVX512_BF16)
  assert precision.resolve("mixed_bfloat16") == "mixed_bfloat16"
  assert len(warnings) == 2 and "avx512_bf16 but no AMX will be slower" in warnings[1]
  monkeypatch.setattr(precision, "cpu_flags", lambda: AMX)
  assert precision.resolve("mixed_bfloat16") == "mixed_bfloat16"
  assert len(warnings) == 2


def test_explicit_fp16_without_a_gpu_warns(monkeypatch):
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))
  monkeypatch.setattr(precision, "gpu_capabilities", lambda: [])
  assert precision.resolve("mixed_float16") == "mixed_float16"
  assert len(warnings) == 1 and "--precision=mixed_float16 without a GPU" in warnings[0]
  assert "--precision=auto or --precision=float32" in warnings[0]
  monkeypatch.setattr(precision, "gpu_capabilities", lambda: [(7, 0)])
  assert precision.resolve("mixed_float16") == "mixed_float16"
  assert len(warnings) == 1


def test_auto_run_saves_the_resolved_policy(make_config, monkeypatch):
  monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2)
  config = make_config(precision="auto", train_steps=3, eval_every=3, checkpoint_every=3)
  loop.train(config)
  saved = json.load(open(f"{config.model_dir}/config.json"))
  assert saved["precision"] == "float32"
