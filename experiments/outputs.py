"""Where an experiment run writes: its workdir and the files in it, each written atomically.

:func:`prepare_workdir` refuses a non-empty workdir unless ``--overwrite`` (an unfinished
run's workdir, :func:`is_incomplete_run`, is cleared and reused); :class:`Workdir` is what
``run(config, workdir)`` writes through: ``log.txt`` (``log``, ``progress``), figures
(``save_figure``, :func:`new_figure`) and ``metrics.csv`` (``add_metrics``). Every file goes
through :func:`atomic_write` (temp file in the same directory + ``os.replace``, SIGINT and
SIGTERM held back meanwhile): a crash or Ctrl-C leaves the old file or the new one, never a
half-written one. :func:`dumps` is the deterministic JSON of ``results.json`` (sorted keys,
NaN/inf as "nan"/"inf"/"-inf").

This module imports only the standard library at import time (numpy and matplotlib are
imported where they are used).
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = REPO_ROOT / "runs"
# Files a finished run leaves; removed first when a run reuses a workdir (--overwrite), so a
# results.json on disk always belongs to the config.json next to it.
COMPLETION_FILES = ("results.json", "timing.json", "REPORT.md")
# Written before any compute: what ran, where and from which code (_common.provenance).
PROVENANCE_FILE = "provenance.json"
# The other files a run writes at the top of its workdir (besides figures, *.png).
RUN_FILES = ("config.json", "log.txt", "metrics.csv", PROVENANCE_FILE)


class WorkdirError(RuntimeError):
  """A workdir that would be overwritten without permission (reported as one line, exit 2)."""


# ---------------------------------------------------------------- deterministic JSON output


def to_jsonable(obj: Any) -> Any:
  """Converts results to plain JSON values; NaN/±inf become "nan"/"inf"/"-inf"."""
  import numpy as np

  if obj is None or isinstance(obj, (str, bool)):
    return obj
  if isinstance(obj, Mapping) or hasattr(obj, "to_dict"):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
    return int(obj)
  if isinstance(obj, np.bool_):
    return bool(obj)
  if isinstance(obj, (float, np.floating)):
    value = float(obj)
    return (
      value
      if math.isfinite(value)
      else ("nan" if value != value else ("inf" if value > 0 else "-inf"))
    )
  if hasattr(obj, "__array__"):
    array = np.asarray(obj)
    return to_jsonable(array.item() if array.ndim == 0 else array.tolist())
  raise TypeError(f"cannot serialise {type(obj).__name__} to JSON: {obj!r}")


def dumps(obj: Any) -> bytes:
  """Deterministic JSON bytes: sorted keys, fixed indentation, shortest float repr."""
  text = json.dumps(to_jsonable(obj), sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
  return (text + "\n").encode("utf-8")


def atomic_write(path: Path | str, data: bytes | str) -> Path:
  """Writes ``data`` to ``path`` via a temp file in the same directory and ``os.replace``.

  Readers (and a crash or Ctrl-C at any point) see the old file or the complete new one,
  never a partial file. SIGINT and SIGTERM are held back while the temp file exists (they
  are delivered right after), so an interrupt cannot land between its creation and the
  ``try`` that removes it; any other failure removes it too.
  """
  path = Path(path)
  if isinstance(data, str):
    data = data.encode("utf-8")
  with _signals_deferred():
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
      with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
      os.chmod(tmp, 0o644)
      os.replace(tmp, path)
    except BaseException:
      with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
      raise
  return path


_DEFERRED_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def _signals_deferred():
  """Holds SIGINT and SIGTERM back; the ones that arrived are delivered on exit.

  In the main thread their Python handlers are swapped for one that records them: the
  process may receive a signal on any thread (XLA's among them), and Python then runs its
  handler in the main thread at once, so blocking the signal for this thread alone left a
  gap (a temp file of ``log.txt`` once survived a SIGINT). Elsewhere (no handlers can be
  set there) the signals are blocked for this thread.
  """
  if threading.current_thread() is not threading.main_thread():
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED_SIGNALS)
    try:
      yield
    finally:
      signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return
  arrived = []
  handlers = {
    s: signal.signal(s, lambda signum, _: arrived.append(signum)) for s in _DEFERRED_SIGNALS
  }
  try:
    yield
  finally:
    for s, handler in handlers.items():
      signal.signal(s, signal.SIG_DFL if handler is None else handler)
    for s in arrived:
      signal.raise_signal(s)


def write_json(path: Path | str, obj: Any) -> Path:
  """Atomically writes ``obj`` as deterministic JSON."""
  return atomic_write(path, dumps(obj))


# ------------------------------------------------------------------------ workdir and logs


class _AtomicLogHandler(logging.Handler):
  """Keeps the log in memory and rewrites ``log.txt`` atomically after every record."""

  def __init__(self, path: Path):
    super().__init__()
    self.path, self.lines = path, []

  def emit(self, record):
    self.lines.append(self.format(record) + "\n")
    atomic_write(self.path, "".join(self.lines))


@contextlib.contextmanager
def logger_to(path: Path, name: str):
  """A logger writing to ``path`` (atomically) and to stderr; handlers removed on exit."""
  logger = logging.getLogger(f"xent_jax.experiments.{name}")
  logger.setLevel(logging.INFO)
  logger.propagate = False
  formatter = logging.Formatter("%(asctime)s %(name)s] %(message)s", "%H:%M:%S")
  handlers = [_AtomicLogHandler(path), logging.StreamHandler(sys.stderr)]
  # Records marked file_only (progress on a terminal, shown there in place) skip stderr.
  handlers[1].addFilter(lambda record: not getattr(record, "file_only", False))
  for handler in handlers:
    handler.setFormatter(formatter)
    logger.addHandler(handler)
  try:
    yield logger
  finally:
    for handler in handlers:
      logger.removeHandler(handler)


PROGRESS_EVERY_S = 5.0  # the most often Workdir.progress logs a line within a long loop


class Workdir:
  """Where one experiment run writes: ``path``, ``log(msg)``, ``save_figure(fig, name)``,
  ``progress(k, n, what)`` and ``save_metrics(rows)``."""

  def __init__(self, path: Path, logger: logging.Logger):
    self.path, self.logger, self.figures, self.captions = path, logger, [], {}
    self.metrics: list[dict] = []
    self._started: dict[str, float] = {}
    self._last_progress: dict[str, float] = {}
    self._terminal_line = False  # an updating progress line is on the terminal

  def log(self, message: str, *args) -> None:
    """Logs one line to ``log.txt`` and stderr."""
    self._clear_terminal_line()
    self.logger.info(message, *args)

  def progress(self, done: int, total: int, what: str) -> None:
    """Logs ``what: step done/total, elapsed, ETA`` (the clock starts at ``done == 0``).

    Call it with 0 before the first step, then after each chunk of work. ``log.txt`` gets
    the start, the end, and in between at most one line every ``PROGRESS_EVERY_S``
    seconds; the ETA extrapolates the mean time per step so far (compilation included).
    On a terminal, stderr shows the steps in between as one line updated in place.
    """
    now = time.perf_counter()
    if not done:
      self._started[what] = self._last_progress[what] = now
      self.log("%s: step 0/%d", what, total)
      return
    elapsed = now - self._started.setdefault(what, now)
    if done >= total:
      self.log("%s: step %d/%d, done in %.1f s", what, done, total, elapsed)
      return
    text = f"{what}: step {done}/{total}, elapsed {elapsed:.1f} s, ETA "
    text += f"{elapsed / done * (total - done):.1f} s"
    terminal = sys.stderr.isatty()
    if now - self._last_progress.get(what, 0.0) >= PROGRESS_EVERY_S:
      self._last_progress[what] = now
      self._clear_terminal_line()
      self.logger.info("%s", text, extra={"file_only": terminal})
    if terminal:
      sys.stderr.write(f"\r{text}\x1b[K")
      sys.stderr.flush()
      self._terminal_line = True

  def _clear_terminal_line(self) -> None:
    """Erases the updating progress line (if any) before a line is logged."""
    if self._terminal_line:
      sys.stderr.write("\r\x1b[K")
      self._terminal_line = False

  def add_metrics(self, run: str, step, **columns) -> None:
    """Adds per-step metrics of ``run`` (arrays of one length, aligned with ``step``).

    They are written at the end of the run to ``metrics.csv``, one row per (run, step):
    ``pandas.read_csv(workdir / "metrics.csv")`` reads it directly.
    """
    import numpy as np

    step = np.asarray(step)
    values = {k: np.asarray(v) for k, v in columns.items()}
    for k, v in values.items():
      if v.shape != step.shape:
        raise ValueError(f"metric {k!r} has shape {v.shape}, step has {step.shape}")
    for i in range(step.size):
      self.metrics.append(
        {"run": run, "step": int(step[i]), **{k: float(v[i]) for k, v in values.items()}}
      )

  def save_metrics(self, filename: str = "metrics.csv") -> str | None:
    """Writes the collected metrics as CSV (atomically); None when there are none."""
    if not self.metrics:
      return None
    import csv

    columns = list(dict.fromkeys(k for row in self.metrics for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _csv_value(row.get(k)) for k in columns} for row in self.metrics)
    atomic_write(self.path / filename, buffer.getvalue())
    return filename

  def save_figure(self, fig, filename: str, caption: str | None = None) -> str:
    """Saves a matplotlib figure as PNG atomically, closes it, returns the file name.

    ``caption``: one line saying what the figure shows (REPORT.md prints it under it).
    """
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write(self.path / filename, buffer.getvalue())
    self.figures.append(filename)
    if caption:
      self.captions[filename] = caption
    return filename


def _csv_value(value):
  """A CSV cell: floats in shortest round-trip form, nan/inf as pandas reads them."""
  if value is None:
    return ""
  if isinstance(value, float) and not math.isfinite(value):
    return "nan" if value != value else ("inf" if value > 0 else "-inf")
  return repr(value) if isinstance(value, float) else value


def new_figure(nrows: int = 1, ncols: int = 1, **kwargs):
  """``plt.subplots`` on the non-interactive Agg backend (matplotlib imported lazily)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt.subplots(nrows, ncols, layout="constrained", **kwargs)


def default_workdir(name: str) -> Path:
  """A fresh ``runs/<name>-<timestamp>[-k]`` path that does not exist yet."""
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  path, k = RUNS_DIR / f"{name}-{stamp}", 1
  while path.exists():
    k += 1
    path = RUNS_DIR / f"{name}-{stamp}-{k}"
  return path


def is_incomplete_run(path: Path | str) -> bool:
  """True for the workdir of a run that started but never finished.

  Every run writes ``provenance.json`` before any compute and ``results.json`` (an
  experiment) or ``REPORT.md`` (``reproduce``) last: a workdir with the first and neither
  of the others was left by a run that failed or was interrupted.
  """
  path = Path(path)
  return (path / PROVENANCE_FILE).is_file() and not any(
    (path / name).exists() for name in COMPLETION_FILES
  )


def _clear_incomplete_run(path: Path) -> list[str]:
  """Removes the files an unfinished run leaves at the top of ``path``; returns their names."""
  removed = []
  for entry in sorted(path.iterdir()):
    if entry.is_file() and (
      entry.name in RUN_FILES
      or entry.suffix == ".png"
      or (entry.name.startswith(".") and entry.name.endswith(".tmp"))
    ):
      entry.unlink()
      removed.append(entry.name)
  return removed


def prepare_workdir(path: Path | str, *, overwrite: bool) -> Path:
  """Creates ``path``, writable, for a run; raises WorkdirError (one line) otherwise.

  A non-empty existing workdir needs ``overwrite``, except the workdir of an unfinished run
  (:func:`is_incomplete_run`): its files are removed (a note on stderr says so) and it is
  reused, so that a failed or interrupted run never blocks its rerun.
  """
  path = Path(path)
  if path.exists() and not path.is_dir():
    raise WorkdirError(f"workdir {path} exists and is not a directory")
  if path.is_dir() and any(path.iterdir()):
    if is_incomplete_run(path):
      removed = _clear_incomplete_run(path)
      print(
        f"note: {path} holds an unfinished run (no results); reusing it "
        f"(removed {', '.join(removed) or 'nothing'})",
        file=sys.stderr,
      )
    elif not overwrite:
      raise WorkdirError(
        f"workdir {path} is not empty; pass --overwrite to reuse it "
        "(its results would be replaced) or choose another --workdir"
      )
    for name in COMPLETION_FILES:
      with contextlib.suppress(FileNotFoundError):
        (path / name).unlink()
  try:
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as error:
    raise WorkdirError(
      f"cannot write to workdir {path}: {error.strerror or error}; choose another --workdir"
    ) from None
  return path
