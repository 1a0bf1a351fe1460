"""Config checking: each key of ``configs/<name>.py`` declared once, with its bound.

A config file declares every key with its default, its bound and a comment, on one line::

    config.learning_rate = bounded(1.0, real(low=0, low_open=True))  # step size of optax.sgd

:func:`bounded` makes the value an ``ml_collections.FieldReference`` that also holds its
checker; ``--config.learning_rate=0.5`` overrides, variants (``config.learning_rate = 0.5``
in the ``smoke`` branch) and ``reproduce --override`` set the value and keep the checker.
:func:`check_declared` (what runs before any compute when an experiment has no
``validate``) checks each key against its own bound and rejects keys that were never
declared. An experiment's ``validate(config)`` is only needed for constraints *between*
keys (``check_grid``, a multiple of, equal lengths, :func:`check_memory`); it starts with
``check_declared(config)``.

A checker is a callable ``(key, value) -> None`` that raises :class:`ConfigError` naming
the key: ``real``, ``integer``, ``reals``, ``choice``, ``boolean``, ``learning_rate``,
``smoothing`` (and ``grid`` for a whole ``{start, stop, num}`` group in
:func:`check_config`, the explicit-spec form).

This module imports only the standard library and ``ml_collections``, so that a config
file can import it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from ml_collections import config_dict


class ConfigError(ValueError):
  """A config value that an experiment cannot run with (reported as one line, exit 2)."""


Checker = Callable[[str, Any], None]


def _fail(key: str, must: str, value: Any) -> None:
  raise ConfigError(f"config.{key} must be {must}, got {value!r}")


def _is_real(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_bounds(key, value, low, high, low_open, high_open, nonzero, what) -> None:
  if not math.isfinite(value):
    _fail(key, f"a finite {what}", value)
  if low is not None and (value < low or (low_open and value == low)):
    _fail(key, f"{'>' if low_open else '>='} {low}", value)
  if high is not None and (value > high or (high_open and value == high)):
    _fail(key, f"{'<' if high_open else '<='} {high}", value)
  if nonzero and value == 0:
    _fail(key, "non-zero", value)


def real(low=None, high=None, *, low_open=False, high_open=False, nonzero=False) -> Checker:
  """A finite real number (an int is accepted) within the given bounds."""

  def check(key, value):
    if not _is_real(value):
      _fail(key, "a real number", value)
    _check_bounds(key, value, low, high, low_open, high_open, nonzero, "real number")

  return check


def integer(low=None, high=None) -> Checker:
  """An int (not a bool) within [low, high]."""

  def check(key, value):
    if not isinstance(value, int) or isinstance(value, bool):
      _fail(key, "an integer", value)
    _check_bounds(key, value, low, high, False, False, False, "integer")

  return check


def reals(*, min_length=1, increasing=False, **bounds) -> Checker:
  """A tuple/list of at least ``min_length`` reals, each passing ``real(**bounds)``."""
  element = real(**bounds)

  def check(key, value):
    if not isinstance(value, (tuple, list)) or len(value) < min_length:
      _fail(key, f"a tuple of at least {min_length} numbers", value)
    for i, v in enumerate(value):
      element(f"{key}[{i}]", v)
    if increasing and any(b <= a for a, b in zip(value, value[1:], strict=False)):
      _fail(key, "strictly increasing", value)

  return check


def tuple_of(element: Checker, *, length: int | None = None, what: str = "") -> Checker:
  """A non-empty tuple/list (of exactly ``length`` entries, described as ``what``, if given)
  whose entries each pass ``element``."""

  def check(key, value):
    if not isinstance(value, (tuple, list)) or not value:
      _fail(key, "a non-empty tuple", value)
    if length is not None and len(value) != length:
      _fail(key, what or f"a tuple of {length}", value)
    for i, v in enumerate(value):
      element(f"{key}[{i}]", v)

  return check


def choice(*options) -> Checker:
  """One of ``options``."""

  def check(key, value):
    if value not in options:
      _fail(key, f"one of {options}", value)

  return check


def boolean() -> Checker:
  """True or False."""

  def check(key, value):
    if not isinstance(value, bool):
      _fail(key, "True or False", value)

  return check


def learning_rate() -> Checker:
  """A learning rate: a real number > 0."""
  return real(low=0, low_open=True)


def smoothing() -> Checker:
  """A label-smoothing ε in [0, 1)."""
  return real(low=0, high=1, high_open=True)


def grid(min_num=2) -> Checker:
  """A group ``{start, stop, num}``: finite start < stop and an integer num >= min_num."""

  def check(key, value):
    spec = {"start": real(), "stop": real(), "num": integer(low=min_num)}
    check_config(value, spec, prefix=f"{key}.")
    if value["start"] >= value["stop"]:
      _fail(key, "a non-empty grid with start < stop", dict(_flatten(value)))

  return check


def available_memory_bytes() -> int | None:
  """Memory this process can still allocate without swapping (Linux MemAvailable), or None."""
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return None


def check_memory(arrays: Mapping[str, float], *, itemsize: int = 8) -> None:
  """Raises ConfigError when the arrays a config implies cannot fit in memory.

  Args:
    arrays: ``{what: number of elements}`` for the arrays the run holds at once, e.g.
      ``{"config.grid.num × 3 models × 2 curves": 3 * 2 * num}``: a lower bound of the
      run's memory, checked before any compute against :func:`available_memory_bytes`.
    itemsize: bytes per element (8: float64 on the host).
  """
  available = available_memory_bytes()
  needed = itemsize * sum(arrays.values())
  if available is not None and needed > available:
    biggest = max(arrays, key=arrays.get)
    raise ConfigError(
      f"this config needs at least {needed / 2**30:.3g} GiB ({biggest}: "
      f"{arrays[biggest]:.3g} values), more than the {available / 2**30:.3g} GiB available"
    )


def _flatten(config: Mapping, prefix: str = "") -> list[tuple[str, Any]]:
  """(dotted key, leaf value) pairs of a nested config."""
  items = []
  for key, value in config.items():
    if isinstance(value, Mapping) or hasattr(value, "to_dict"):
      items += _flatten(value, f"{prefix}{key}.")
    else:
      items.append((f"{prefix}{key}", value))
  return items


def check_config(config: Mapping, spec: Mapping[str, Checker], *, prefix: str = "") -> None:
  """Checks that ``config`` has exactly the keys of ``spec`` and that each value passes.

  A spec key may name a group (e.g. ``"grid": grid()``): its checker gets the whole group.
  Raises ConfigError for the first unknown key, missing key or bad value.
  """
  covered = set()
  for key, checker in spec.items():
    node = config
    try:
      for part in key.split("."):
        node = node[part]
    except (KeyError, TypeError, AttributeError):
      raise ConfigError(f"config.{prefix}{key} is missing") from None
    checker(prefix + key, node)
    covered.add(key)
  for key, _ in _flatten(config):
    if not any(key == c or key.startswith(c + ".") for c in covered):
      raise ConfigError(f"config.{prefix}{key} is not a known key of this experiment")


class Bounded(config_dict.FieldReference):
  """A config value that carries its checker (see :func:`bounded`)."""

  def __init__(self, default, checker: Checker):
    super().__init__(default)
    self.checker = checker


def bounded(default, checker: Checker) -> Bounded:
  """Declares a config key: its ``default`` value and the ``checker`` of any value it takes.

  Used on the right of a config file's assignment; the config reads, overrides and
  serialises as the plain value (``config.key`` is ``default`` until set).

  >>> import ml_collections
  >>> config = ml_collections.ConfigDict()
  >>> config.num_steps = bounded(100, integer(low=1))
  >>> config.num_steps = 0
  >>> check_declared(config)
  Traceback (most recent call last):
  ...
  experiments.config_checks.ConfigError: config.num_steps must be >= 1, got 0
  """
  return Bounded(default, checker)


def check_declared(config, *, prefix: str = "") -> None:
  """Checks each key of ``config`` against the bound its config file declared.

  Raises ConfigError naming the first key whose value is out of its bound, or a key that
  was not declared with :func:`bounded` (not a key of this experiment).
  """
  for key, value in config.items(preserve_field_references=True):
    if isinstance(value, config_dict.ConfigDict):
      check_declared(value, prefix=f"{prefix}{key}.")
    elif isinstance(value, Bounded):
      value.checker(prefix + key, value.get())
    else:
      raise ConfigError(
        f"config.{prefix}{key} is not a known key of this experiment "
        "(a config file declares each key as bounded(default, checker))"
      )


def check_grid(config, key: str) -> None:
  """Checks that the group ``config.<key>`` = ``{start, stop, num}`` has start < stop."""
  group = config[key]
  if group.start >= group.stop:
    _fail(key, "a non-empty grid with start < stop", dict(_flatten(group)))
