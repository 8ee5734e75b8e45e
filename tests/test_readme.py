"""The README's commands run as written from a fresh clone: every flag they pass is one
their program defines (with an allowed value, for enum flags), and every file of the
repository they name exists. One `--help` subprocess per program, run side by side."""

import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
USAGE = os.path.join(ROOT, "docs", "USAGE.md")  # The README's details: checked alike.
PROGRAM = re.compile(r"^(train\.py|scripts/\w+\.py)$")
ABSL_FLAG = re.compile(r"^\s+(?:-\S,)?--(?:\[no\])?(\w+):(?: <([^>]*)>:)?", re.M)
ARGPARSE_FLAG = re.compile(r"--(\w+)")


def readme_commands(text):
  """Every `python PROGRAM ...` command of the text, as token lists without `python`: the
  lines of its code blocks and its inline code, split at `&&`, `;` and `|`."""
  blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
  lines = [line for block in blocks for line in block.splitlines()]
  lines += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
  commands = []
  for line in lines:
    for part in re.split(r"&&|;|\|", line.split(" #")[0]):
      if not part.strip().startswith("python "):
        continue  # Prose in code blocks (the layout) may hold lone apostrophes.
      tokens = shlex.split(part)
      if len(tokens) >= 2 and PROGRAM.match(tokens[1]):
        commands.append(tokens[1:])
  return commands


def flag_uses(tokens):
  """[(name, value or None)] of the `--flag[=value]` tokens of a command."""
  uses = []
  for token in tokens:
    if token.startswith("--") and len(token) > 2:
      name, _, value = token[2:].partition("=")
      uses.append((name, value if "=" in token else None))
  return uses


def help_command(program):
  """absl programs list every flag (their own, absl's, --flagfile) under --helpfull;
  argparse ones under --help."""
  source = open(os.path.join(ROOT, program)).read()
  argparse = "ArgumentParser" in source or "argparse" in source
  return [sys.executable, program, "--help" if argparse else "--helpfull"], argparse


def defined_flags(programs):
  """{program: {flag name: allowed values or None}}, from each program's help, the
  programs run in parallel."""
  running = {}
  for program in programs:
    command, argparse = help_command(program)
    running[program] = (argparse, subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  found = {}
  for program, (argparse, process) in running.items():
    out, err = process.communicate(timeout=300)
    if argparse:
      flags = {name: None for name in ARGPARSE_FLAG.findall(out)}
    else:
      flags = {name: choices.split("|") if choices else None
               for name, choices in ABSL_FLAG.findall(out)}
    assert flags, f"{program}: no flags found in its help:\n{out[-2000:]}{err[-2000:]}"
    found[program] = flags
  return found


def known(flags, name):
  """Whether `--name` is accepted: defined, or the `--noNAME` form of a defined one."""
  return name in flags or (name.startswith("no") and name[2:] in flags)


def flagfile_flags(path):
  """The `--flag[=value]` lines of a flag file, as flag_uses gives them."""
  lines = [line.strip() for line in open(path)]
  return flag_uses([line for line in lines if line.startswith("--")])


def test_readme_commands_are_found():
  commands = readme_commands(open(README).read())
  programs = {tokens[0] for tokens in commands}
  assert "train.py" in programs and "scripts/evaluate.py" in programs, commands
  found = readme_commands("x `python train.py --a=1 && python scripts/b.py --c` y\n"
                          "```sh\npython scripts/d.py --e=2  # note --f\n```\n")
  assert sorted(found) == [["scripts/b.py", "--c"], ["scripts/d.py", "--e=2"],
                           ["train.py", "--a=1"]]


def test_every_flag_of_every_readme_command_is_defined_by_its_program():
  commands = readme_commands(open(README).read()) + readme_commands(open(USAGE).read())
  for tokens in commands:
    assert os.path.isfile(os.path.join(ROOT, tokens[0])), f"no such program: {tokens[0]}"
  flags = defined_flags(sorted({tokens[0] for tokens in commands}))
  wrong = []
  for tokens in commands:
    uses = flag_uses(tokens[1:])
    for name, value in uses:
      if name == "flagfile":
        assert os.path.isfile(os.path.join(ROOT, value)), f"no flag file {value}"
        uses += flagfile_flags(os.path.join(ROOT, value))
    for name, value in uses:
      choices = flags[tokens[0]].get(name)
      if not known(flags[tokens[0]], name):
        wrong.append(f"{' '.join(tokens)}: {tokens[0]} has no flag --{name}")
      elif choices and value is not None and value not in choices:
        wrong.append(f"{' '.join(tokens)}: --{name}={value} is not one of {choices}")
  assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("pattern", [r"configs/\w+\.flags", r"docs/\w+\.md", r"BUILD\.md",
                                     r"scripts/\w+\.(?:py|sh)"])
def test_every_file_the_readme_names_exists(pattern):
  names = set(re.findall(pattern, open(README).read()))
  missing = [name for name in names if not os.path.exists(os.path.join(ROOT, name))]
  assert not missing, f"README.md names files that do not exist: {missing}"


def test_the_readme_stays_a_page():
  assert len(open(README).read().splitlines()) <= 220
