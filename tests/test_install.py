"""The install a new user makes: declared ranges, CI's own environment, the suite collects."""

import configparser
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def requirements():
  """{section: [requirement lines]} of setup.cfg's install_requires and extras."""
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, "setup.cfg"))
  found = {"install_requires": cfg["options"]["install_requires"]}
  found.update(cfg["options.extras_require"])
  return {name: [line.strip() for line in text.splitlines() if line.strip()]
          for name, text in found.items()}


def test_every_dependency_has_a_tested_lower_bound_and_a_next_major_upper_bound():
  for section, lines in requirements().items():
    for line in lines:
      name, spec = re.match(r"([A-Za-z0-9_.\-\[\]]+)\s*(.*)", line).groups()
      lower = re.search(r">=\s*(\d+)", spec)
      upper = re.search(r"<\s*(\d+)(?:\s*$|\s*,)", spec)
      assert lower and upper, f"{section}: {line!r} needs >=OLDEST_TESTED,<NEXT_MAJOR"
      assert re.search(r"<\s*\d+\s*(,|$)", spec), (
          f"{section}: {line!r}: the upper bound is a major release (<N), not a minor one")
      assert int(upper.group(1)) > int(lower.group(1)), f"{section}: {line!r}"


def test_ci_runs_the_readme_test_command_in_a_fresh_virtual_environment():
  readme = open(os.path.join(ROOT, "README.md")).read()
  ci = open(os.path.join(ROOT, ".ci", "run")).read()
  command = re.search(r"(python -m pip install -e '\.\[test[^']*\]' && python -m pytest[^\n]*)",
                      readme).group(1)
  assert command.replace("pip install -e", "pip install -q -e") in ci
  venv = ci.index("-m venv")
  assert venv < ci.index("activate") < ci.index(command.split(" && ")[1])
  assert ".venv" in open(os.path.join(ROOT, ".gitignore")).read()


def test_the_suite_collects_under_the_installed_pytest(tmp_path):
  """pytest >= 9.1 refused a conftest option whose dest clashed with `-p`'s; collecting a
  test file (with --plugins given, as users do) runs every conftest hook."""
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
       "--plugins=", os.path.join(ROOT, "tests", "test_registry.py")],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  assert re.search(r"\d+ tests? collected", result.stdout), result.stdout[-2000:]
