"""Registry items as `name` or `name(key=value, ...)`: parsing, checks, listing."""

import pytest

from research.registry import Registry, Spec, SpecError, parse_spec, split_list

THINGS = Registry("thing")


@THINGS.register("plain")
def plain():
  """A thing without settings."""
  return "plain"


@THINGS.register("tuned")
def tuned(size, rate=0.5, name="a", on=True, steps=(1, 2)):
  """A thing with settings; `size` comes from the code."""
  return (size, rate, name, on, steps)


def test_names_with_and_without_arguments():
  assert parse_spec("plain") == Spec("plain", {})
  assert parse_spec(" tuned(rate=1e-3, name='b', on=False, steps=(3,)) ") == Spec(
      "tuned", {"rate": 1e-3, "name": "b", "on": False, "steps": (3,)})
  assert str(Spec("tuned", {"rate": 0.1})) == "tuned(rate=0.1)"


def test_build_passes_code_arguments_then_settings():
  assert THINGS.build("tuned(rate=2)", 7) == (7, 2, "a", True, (1, 2))  # int for a float
  assert THINGS.build("plain") == "plain"


@pytest.mark.parametrize("text, message", [
    ("nope", "unknown thing 'nope'; known: plain, tuned (an idea in its own file is "
             "added with --plugins=FILE.py)"),
    ("tunde(rate=1)", "unknown thing 'tunde' (did you mean 'tuned'?); known: plain, tuned"),
    ("tuned(speed=1)", "thing 'tuned' has no parameter 'speed'; its parameters: rate, name, "
                       "on, steps"),
    ("tuned(size=3)", "has no parameter 'size'"),  # Code-supplied, not a setting.
    ("tuned(rate='fast')", "tuned(rate='fast'): expected a float like the default 0.5"),
    ("tuned(on=1)", "expected a bool"),
    ("tuned(name=b)", "the value of 'name' in 'tuned(name=b)' is not a Python literal"),
    ("tuned(0.1)", "with named arguments"),
    ("tuned(rate=", "cannot parse thing"),
    ("a.b", "cannot parse thing"),
])
def test_bad_items_say_what_is_wrong(text, message):
  with pytest.raises(SpecError) as error:
    THINGS.parse(text)
  assert message in str(error.value)


def test_lists_split_outside_parentheses_and_quotes():
  assert split_list("crop(padding=2),flip, mixup(alpha=0.2)") == [
      "crop(padding=2)", "flip", "mixup(alpha=0.2)"]
  assert split_list("t(steps=(1, 2), name='x,y'),") == ["t(steps=(1, 2), name='x,y')"]
  assert split_list("") == [] and split_list(" , ") == []


def test_describe_lists_every_item_with_its_settings():
  text = THINGS.describe()
  assert "plain()  A thing without settings." in text
  assert "tuned(rate=0.5, name='a', on=True, steps=(1, 2))  A thing with settings" in text
