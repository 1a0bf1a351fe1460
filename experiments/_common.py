"""The shared helper behind every experiment: claims, the run, provenance and the absl main.

An experiment is a module ``experiments/<name>.py`` with a config file ``configs/<name>.py``
that declares every key once, with its default, bound and comment (``config.num_steps =
bounded(100, integer(low=1))  # steps``; see :mod:`experiments.config_checks`). To be
runnable on its own and registered in ``experiments/reproduce.py`` the module exposes:

``validate(config) -> None`` (optional)
    Raises :class:`ConfigError` for a bad config, before any compute: the declared bounds
    (``check_declared(config)``) and the constraints *between* keys, e.g. ``check_grid``,
    "num_steps a multiple of num_checkpoints", :func:`check_memory`. Without it, the
    declared bounds alone are checked.
``run(config, workdir: Workdir) -> dict``
    Does the work and returns the results: every number it reports (plain Python / numpy /
    jax values; :func:`to_jsonable` converts them), a ``"claims"`` list built with
    :func:`claim`, and optionally a ``"summary"`` dict of a few headline numbers for the
    report. Figures go through ``workdir.save_figure(fig, "name.png")``, log lines through
    ``workdir.log(...)``. No timings in the results (they go to ``timing.json``).
``if __name__ == "__main__": _common.main(run, validate)`` (or ``main(run)``)
    The absl entry point: ``python -m experiments.<name> --config=configs/<name>.py
    --workdir=DIR [--config.key=value ...] [--overwrite] [--print_config]
    [--only_check_args]``; ``--help`` lists the flags and the config fields.

``configs/<name>.py`` defines ``get_config(variant=None)``; ``variant="smoke"`` must return
a config that runs in about a second (the tests and ``reproduce --smoke`` use it). Register
the experiment by adding its name to ``EXPERIMENTS`` in ``experiments/reproduce.py``.

Each run writes, atomically (temp file in the same directory + ``os.replace``), into its
workdir: ``config.json`` and ``provenance.json`` (before any compute: code, versions,
machine, command line, seeds; see :func:`provenance`), ``log.txt`` (with
``Workdir.progress`` lines for long loops), the figures (``Workdir.save_figure``, with a
one-line caption for the report), ``metrics.csv`` (per-step metrics added with
``Workdir.add_metrics``), ``results.json`` (written last, sorted keys, byte-identical for
the same config: nothing run-specific goes in it; NaN/inf as the strings
"nan"/"inf"/"-inf") and ``timing.json``. A non-empty workdir is refused unless
``--overwrite`` is given, except the workdir of an unfinished run (provenance but no
results), which is cleared and reused.

Config checking is in :mod:`experiments.config_checks`, the workdir and its atomic files in
:mod:`experiments.outputs`; this module re-exports their names (``_common.Workdir``,
``_common.real``, ...), so an experiment imports ``_common`` alone.

This module imports only the standard library and ml_collections at import time (numpy,
jax, absl and matplotlib are imported where they are used), so importing it stays light.
"""

from __future__ import annotations

import ast
import contextlib
import datetime
import importlib
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from experiments.config_checks import (  # noqa: F401  (the experiments' names for them)
  Checker,
  ConfigError,
  _flatten,
  boolean,
  bounded,
  check_config,
  check_declared,
  check_grid,
  check_memory,
  choice,
  grid,
  integer,
  learning_rate,
  real,
  reals,
  smoothing,
  tuple_of,
)
from experiments.outputs import (  # noqa: F401  (the experiments' names for them)
  COMPLETION_FILES,
  PROVENANCE_FILE,
  RUN_FILES,
  RUNS_DIR,
  Workdir,
  WorkdirError,
  atomic_write,
  default_workdir,
  dumps,
  is_incomplete_run,
  logger_to,
  new_figure,
  prepare_workdir,
  to_jsonable,
  write_json,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS_DIR = REPO_ROOT / "configs"
VERDICTS = ("holds", "partly", "fails")


# -------------------------------------------------------------------------------- claims


def claim(
  claim_id: str,
  seed_section: str,
  statement: str,
  measured: Any,
  *,
  holds,
  condition: str | None = None,
  correction: str | None = None,
) -> dict:
  """One verdict on a claim of the seed, decided by the caller's measured values.

  Args:
    claim_id: short stable id, e.g. ``"2.6-model-3-lowest-entropy"``.
    seed_section: the seed's section, e.g. ``"2.6"``.
    statement: what the seed claims (a short paraphrase, optionally quoting it).
    measured: the measured value(s) the verdict rests on (number, string or flat dict).
    holds: a computed boolean (Python or numpy/jax scalar bool): does the claim hold as
      stated, in general?
    condition: where ``holds`` is False, the condition under which it does hold (computed
      from the measurements); gives the verdict "partly". None: it holds nowhere ("fails").
    correction: the correct statement, required whenever the verdict is not "holds"
      (listed in the report's errata).

  Returns:
    ``{"id", "seed_section", "statement", "measured", "holds", "verdict"}`` plus
    ``"condition"`` (verdict "partly") and ``"correction"`` (verdict not "holds").
  """
  holds = _as_bool(holds, claim_id)
  verdict = "holds" if holds else ("partly" if condition else "fails")
  result = {
    "id": claim_id,
    "seed_section": str(seed_section),
    "statement": statement,
    "measured": to_jsonable(measured),
    "holds": holds,
    "verdict": verdict,
  }
  if verdict == "partly":
    result["condition"] = condition
  if verdict != "holds":
    if not correction:
      raise ValueError(f"claim {claim_id!r} does not hold: give the correct statement")
    result["correction"] = correction
  return result


def _as_bool(value: Any, claim_id: str) -> bool:
  import numpy as np

  array = np.asarray(value)
  if array.shape != () or array.dtype != np.bool_:
    raise TypeError(f"claim {claim_id!r}: holds must be a computed boolean, got {value!r}")
  return bool(array)


def _check_results(name: str, results: Any) -> None:
  if not isinstance(results, dict) or not isinstance(results.get("claims"), list):
    raise TypeError(f"{name}.run must return a dict with a 'claims' list")
  for c in results["claims"]:
    missing = {"id", "seed_section", "statement", "measured", "holds", "verdict"} - set(c)
    if missing or c["verdict"] not in VERDICTS:
      raise TypeError(f"{name}: malformed claim {c!r} (use _common.claim)")


def load_config(name: str, variant: str | None = None):
  """``configs/<name>.py``'s ``get_config(variant)``, locked like the absl flag's."""
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config(variant) if variant else module.get_config()
  config.lock()
  return config


def run_experiment(
  name: str,
  run_fn: Callable,
  config,
  workdir: Path | str,
  *,
  validate: Callable | None = None,
  overwrite: bool = False,
) -> dict:
  """Validates ``config``, then runs ``run_fn(config, Workdir)`` writing every output.

  Raises ConfigError (nothing written) or WorkdirError (nothing written) before compute.
  Returns the results as written to ``results.json``.
  """
  if validate is not None:
    validate(config)
  path = prepare_workdir(workdir, overwrite=overwrite)
  config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  # provenance.json first: from here on, an unfinished run is recognised (is_incomplete_run).
  write_json(path / PROVENANCE_FILE, provenance(name, config_dict))
  write_json(path / "config.json", config_dict)
  start_utc, start = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
  with logger_to(path / "log.txt", name) as logger:
    workdir = Workdir(path, logger)
    workdir.log("%s: running in %s", name, path)
    results = run_fn(config, workdir)
    _check_results(name, results)
    results = {**results, "experiment": name, "figures": sorted(workdir.figures)}
    if workdir.captions:
      results["figure_captions"] = workdir.captions
    workdir.save_metrics()
    write_json(path / "results.json", results)
    wall_s = time.perf_counter() - start
    write_json(
      path / "timing.json",
      {"wall_s": wall_s, "started_utc": start_utc.isoformat(), **_environment()},
    )
    verdicts = [c["verdict"] for c in results["claims"]]
    workdir.log(
      "%s: %s in %.2f s",
      name,
      (
        f"{len(verdicts)} claims ({', '.join(f'{verdicts.count(v)} {v}' for v in VERDICTS)})"
        if verdicts
        else "done (it checks no claims of the seed)"
      ),
      wall_s,
    )
  return to_jsonable(results)


def _environment() -> dict:
  """Versions and mode the numbers were computed with (kept out of results.json)."""
  env = {"python": sys.version.split()[0]}
  if "jax" in sys.modules:
    jax = sys.modules["jax"]
    env.update(
      jax=jax.__version__, backend=jax.default_backend(), x64=bool(jax.config.jax_enable_x64)
    )
  return env


def git_commit() -> dict:
  """``{"commit": sha or "unknown", "dirty": bool or None}`` of the code that runs."""
  import subprocess

  def git(*args):
    return subprocess.run(
      ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10
    )

  try:
    head = git("rev-parse", "HEAD")
    if head.returncode:
      return {"commit": "unknown", "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
  except (OSError, subprocess.SubprocessError):
    return {"commit": "unknown", "dirty": None}


def command_line() -> list[str]:
  """The command as typed: ``python -m experiments.NAME --flag ...`` for a module run."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  if spec is not None and spec.name and sys.argv[:1] != ["-c"]:
    return ["python", "-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]]
  return ["python", *sys.argv]


PROVENANCE_PACKAGES = ("jax", "jaxlib", "optax", "numpy", "ml-collections", "absl-py")


def provenance(name: str, config: Mapping | None = None) -> dict:
  """What produced a run: code, versions, machine, command line and seeds.

  Written to ``provenance.json`` next to ``results.json``, never into it: results.json
  stays byte-identical for the same config and seed (SPEC §5), while this file differs
  between runs (the command line, the start time, the machine).
  """
  import importlib.metadata
  import platform

  versions = {}
  for package in PROVENANCE_PACKAGES:
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = "not installed"
  record = {
    "experiment": name,
    "git": git_commit(),
    "command": command_line(),
    "cwd": os.getcwd(),
    "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "python": platform.python_version(),
    "packages": versions,
    "platform": platform.platform(),
    "machine": platform.machine(),
    "cpu_count": os.cpu_count(),
  }
  if "jax" in sys.modules:
    jax = sys.modules["jax"]
    record["jax_backend"] = jax.default_backend()
    record["devices"] = [str(d) for d in jax.devices()]
    record["x64"] = bool(jax.config.jax_enable_x64)
  if config is not None:
    record["seeds"] = {k: v for k, v in _flatten(config) if "seed" in k.rsplit(".", 1)[-1]}
  return record


# ---------------------------------------------------------------------------- absl entry


def _one_line(error: BaseException) -> str:
  """A one-line message for an exception (the last line of an embedded traceback)."""
  text = str(error).strip()
  if isinstance(error, (KeyError, AttributeError)):  # ml_collections quotes it (twice)
    for _ in range(2):
      with contextlib.suppress(ValueError, SyntaxError):
        text = ast.literal_eval(text) if text[:1] in "'\"" else text
    return "unknown config key: " + " ".join(text.split())
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if isinstance(error, OSError) and lines:
    return f"cannot load the --config file: {lines[-1]}"
  if any(line.startswith("Traceback") for line in lines):
    return lines[0].rstrip(":") + " " + lines[-1]
  return " ".join(lines) or type(error).__name__


def _die(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def _raise_exit(signum, frame):
  """SIGTERM → SystemExit, so that pending atomic writes clean up their temp files."""
  del frame
  raise SystemExit(128 + signum)


def experiment_name(run_fn: Callable) -> str:
  """The experiment's name: its module's last component (also when run as __main__)."""
  module = sys.modules.get(run_fn.__module__)
  spec = getattr(module, "__spec__", None)
  if spec is not None and spec.name:
    return spec.name.rsplit(".", 1)[-1]
  return Path(getattr(module, "__file__", "experiment")).stem


def run_app(body: Callable[[], None], *, check: Callable[[], None] | None = None) -> None:
  """``absl.app.run(body)`` with one-line errors instead of tracebacks.

  A bad flag, config override or config file, a ConfigError or WorkdirError print one
  ``error:`` line on stderr and exit with status 2; stray arguments are rejected; Ctrl-C
  exits with 130 and SIGTERM with 143, after pending atomic writes have cleaned up.
  ``--only_check_args`` runs ``check()`` (config validation) after parsing, then exits:
  0 and ``ok: ...`` on stdout, or the error line and 2.
  """
  from absl import app, flags
  from absl import logging as absl_logging

  flag_values = flags.FLAGS

  def parse(argv):
    try:
      rest = flag_values(argv)
      if "config" in flag_values:
        flag_values.config.to_dict()  # a config file that failed to load raises here
    except Exception as error:
      _die(_one_line(error))
    if flag_values["only_check_args"].value:
      if len(rest) > 1:
        _die(f"unexpected arguments {rest[1:]} (settings go in --config.key=value)")
      try:
        if check is not None:
          check()
      except (ConfigError, WorkdirError) as error:
        _die(str(error))
      print("ok: flags and config are valid")
    return rest

  def wrapped(argv):
    if len(argv) > 1:
      _die(f"unexpected arguments {argv[1:]} (settings go in --config.key=value)")
    absl_logging.set_verbosity(absl_logging.WARNING)  # no INFO chatter from libraries
    signal.signal(signal.SIGTERM, _raise_exit)
    try:
      body()
    except (ConfigError, WorkdirError) as error:
      _die(str(error))
    except KeyboardInterrupt:
      _die("interrupted; the files already in the workdir are complete", 130)

  app.define_help_flags()  # --only_check_args is defined with them
  app.run(wrapped, flags_parser=parse)


_CONFIG_LINE = re.compile(r"^\s*config((?:\.\w+)+)\s*=\s*(.*?)\s*(?:#\s*(.*))?$")
_COMMENT_LINE = re.compile(r"^\s*#\s?(.*)$")


def config_field_comments(name: str) -> dict[str, str]:
  """``{dotted key: comment}`` from ``configs/<name>.py``.

  A key's comment is the one at the end of its line (``config.key = value  # comment``)
  or, where that line has none, the comment lines right above it. Only the default
  config's lines count: the first commented assignment of a key wins (variants come later
  in the file and reassign).
  """
  comments = {}
  try:
    lines = (CONFIGS_DIR / f"{name}.py").read_text("utf-8").splitlines()
  except OSError:
    return comments
  above = []
  for line in lines:
    match = _CONFIG_LINE.match(line)
    comment = match and (match.group(3) or " ".join(above))
    if comment:
      comments.setdefault(match.group(1)[1:], comment)
    comment_line = _COMMENT_LINE.match(line)
    above = [*above, comment_line.group(1).strip()] if comment_line else []
  return comments


def config_help(name: str) -> str:
  """The text ``--help`` shows after the module docstring: every config field of
  ``configs/<name>.py`` with its default value and its comment, and the variants."""
  config = load_config(name)
  comments = config_field_comments(name)
  rows = [(f"--config.{k}={_flag_value(v)}", comments.get(k, "")) for k, v in _flatten(config)]
  width = min(max(len(flag) for flag, _ in rows), 48)
  lines = [
    "",
    f"Config fields (configs/{name}.py; override any as --config.FIELD=VALUE, the variant",
    f"with --config=configs/{name}.py:smoke; --print_config shows the resolved config,",
    "--only_check_args validates the flags and the config, both without running):",
    "",
  ]
  for flag, comment in rows:
    pad = " " * max(1, width - len(flag) + 2)
    lines.append(f"  {flag}{pad}{comment}".rstrip())
  return "\n".join(lines) + "\n"


def _flag_value(value) -> str:
  """A config value as it is typed after ``--config.key=`` in a shell."""
  import shlex

  return shlex.quote(value if isinstance(value, str) else repr(value))


def _add_to_usage(text: str) -> None:
  """Appends ``text`` to the usage absl prints for ``--help`` (``__main__``'s docstring)."""
  module = sys.modules.get("__main__")
  if module is not None:
    module.__doc__ = (module.__doc__ or "") + text.replace("%", "%%")


def main(run_fn: Callable, validate: Callable | None = None) -> None:
  """The absl entry point of an experiment (``if __name__ == "__main__": main(run, validate)``).

  ``validate(config)`` runs before any compute (and for ``--print_config`` and
  ``--only_check_args``); None: :func:`check_declared`, the bounds the config file declares.

  Flags: ``--config`` (default ``configs/<name>.py``; ``:smoke`` and ``--config.key=value``
  overrides), ``--workdir`` (default a fresh ``runs/<name>-<timestamp>``), ``--overwrite``,
  ``--print_config`` (print the resolved config as JSON, validate it, exit) and absl's
  ``--only_check_args`` (validate the flags and the config, exit). ``--help`` lists these
  flags and every config field with its default and comment.
  """
  from absl import flags
  from ml_collections import config_flags

  name = experiment_name(run_fn)
  validate = validate or check_declared
  # The flags below are the experiment's own: attributed to __main__, --help lists them.
  flags.disclaim_key_flags()
  flags.DEFINE_string("workdir", None, "Output directory (default: runs/<name>-<timestamp>).")
  flags.DEFINE_bool("overwrite", False, "Allow reusing a non-empty --workdir.")
  flags.DEFINE_bool("print_config", False, "Print the resolved config (JSON), validate it, exit.")
  try:
    config_flags.DEFINE_config_file(
      "config", str(CONFIGS_DIR / f"{name}.py"), "Experiment config file.", lock_config=True
    )
    _add_to_usage(config_help(name))
  except Exception as error:  # overrides of the default config are parsed here already
    _die(_one_line(error))

  def check():
    if validate is not None:
      validate(flags.FLAGS.config)

  def body():
    flag_values = flags.FLAGS
    if flag_values.print_config:
      sys.stdout.write(dumps(flag_values.config.to_dict()).decode("utf-8"))
      sys.stdout.flush()
      check()
      return
    run_experiment(
      name,
      run_fn,
      flag_values.config,
      flag_values.workdir or default_workdir(name),
      validate=validate,
      overwrite=flag_values.overwrite,
    )

  run_app(body, check=check)
