"""Name -> builder registries: the way researchers plug in a new idea.

A new model, augmentation, loss, metric, regularizer, step kind, optimizer, schedule or
hook is one decorated builder. Its keyword parameters are the item's settings: a flag
names the item as `name` or `name(key=value, ...)`, values as Python literals, and
they are checked against the builder's signature before any data is read:

    @AUGMENTATIONS.register("mixup")
    def mixup(alpha=0.2):          # --augment="crop,mixup(alpha=0.4)"
      ...

Builders may also take leading positional arguments that the code supplies (a model's
`num_classes`); only keyword parameters with defaults are settable from a flag.
"""

import ast
import dataclasses
import difflib
import inspect


class SpecError(ValueError):
  """A registry item that cannot be built from its text; the message says why."""


@dataclasses.dataclass(frozen=True)
class Spec:
  """One parsed item: `crop(padding=2)` -> Spec("crop", {"padding": 2})."""
  name: str
  kwargs: dict

  def __str__(self):
    args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
    return f"{self.name}({args})" if args else self.name


class Registry:
  """A plain dict with a decorator that refuses duplicates and names the choices."""

  def __init__(self, kind):
    self.kind = kind
    self._entries = {}

  def register(self, name):
    def decorator(fn):
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is already registered")
      self._entries[name] = fn
      return fn
    return decorator

  def get(self, name):
    if name not in self._entries:
      raise KeyError(self._unknown(name))
    return self._entries[name]

  def _unknown(self, name):
    close = difflib.get_close_matches(name, self.names(), n=1)
    return (f"unknown {self.kind} {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            + f"; known: {', '.join(self.names())} "
            f"(an idea in its own file is added with --plugins=FILE.py)")

  def names(self):
    return sorted(self._entries)

  def __contains__(self, name):
    return name in self._entries

  # --- items with arguments ------------------------------------------------------

  def parameters(self, name):
    """{parameter: default} that a flag may set for item `name`."""
    return {p.name: p.default for p in inspect.signature(self.get(name)).parameters.values()
            if p.default is not inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

  def parse(self, text):
    """The checked Spec of `text`; SpecError names the item and what is wrong."""
    spec = parse_spec(text, self.kind)
    if spec.name not in self._entries:
      raise SpecError(self._unknown(spec.name))
    known = self.parameters(spec.name)
    for key, value in spec.kwargs.items():
      if key not in known:
        listed = ", ".join(known) or "none"
        raise SpecError(f"{self.kind} {spec.name!r} has no parameter {key!r}; "
                        f"its parameters: {listed}")
      default = known[key]
      if default is not None and not _same_kind(value, default):
        kind = type(default).__name__
        raise SpecError(f"{self.kind} {spec.name}({key}={value!r}): expected "
                        f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} like the default "
                        f"{default!r}")
    return spec

  def parse_list(self, text):
    """Specs of a comma-separated list (commas inside parentheses belong to an item);
    `none`, like an empty text, is the empty list."""
    if text.strip() == "none":
      return []
    return [self.parse(item) for item in split_list(text)]

  def build(self, text, *args):
    """The builder of `text` called with `args` (code-supplied) and its parsed kwargs."""
    spec = text if isinstance(text, Spec) else self.parse(text)
    return self.get(spec.name)(*args, **spec.kwargs)

  def describe(self, notes=None):
    """One line per item: `name(key=default, ...)  first docstring line`, and under it
    the item's line of `notes` ({name: text}) if it has one."""
    lines = []
    for name in self.names():
      params = ", ".join(f"{k}={v!r}" for k, v in self.parameters(name).items())
      doc = (inspect.getdoc(self.get(name)) or "").split("\n")[0]
      lines.append(f"  {name}({params})" + (f"  {doc}" if doc else ""))
      if notes and name in notes:
        lines.append(f"      {notes[name]}")
    return "\n".join(lines)


def _same_kind(value, default):
  """Whether `value` may replace `default`: ints pass for floats, bools only for bools."""
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(default, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float))
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(default))


def parse_spec(text, kind="item"):
  """`name` or `name(key=literal, ...)` -> Spec; SpecError on anything else."""
  text = text.strip()
  try:
    node = ast.parse(text, mode="eval").body
  except SyntaxError:
    raise SpecError(f"cannot parse {kind} {text!r}: expected name or "
                    "name(key=value, ...)") from None
  if isinstance(node, ast.Name):
    return Spec(node.id, {})
  if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)) or node.args:
    raise SpecError(f"cannot parse {kind} {text!r}: expected name or name(key=value, ...) "
                    "with named arguments")
  kwargs = {}
  for keyword in node.keywords:
    try:
      kwargs[keyword.arg] = ast.literal_eval(keyword.value)
    except ValueError:
      raise SpecError(f"{kind} {node.func.id}: the value of {keyword.arg!r} in {text!r} is "
                      "not a Python literal (quote strings)") from None
  return Spec(node.func.id, kwargs)


def split_list(text):
  """Splits at the commas outside parentheses, brackets and quotes; drops empty items."""
  items, depth, quote, current = [], 0, None, []
  for char in text:
    if quote:
      quote = None if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in "([":
      depth += 1
    elif char in ")]":
      depth -= 1
    elif char == "," and depth == 0:
      items.append("".join(current))
      current = []
      continue
    current.append(char)
  items.append("".join(current))
  return [item.strip() for item in items if item.strip()]
