"""Tests of ``experiments/_common.py``: config checks, atomic and deterministic outputs,
workdir protection, claims, and the command line (one-line errors, interrupts)."""

import contextlib
import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from experiments import _common, outputs

REPO_ROOT = Path(__file__).resolve().parents[2]
E1_SMOKE = "configs/entropy_comparison.py:smoke"


def _toy_values(**overrides) -> dict:
  """A small nested config as plain dicts; ``overrides`` keys may be dotted."""
  values = {
    "learning_rate": 0.1,
    "smoothing": 0.1,
    "steps": 10,
    "unit": "nats",
    "grid": {"start": -1.0, "stop": 1.0, "num": 5},
    "seeds": (0, 1),
  }
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = values
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return values


def _toy_config(**overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(_toy_values(**overrides))


TOY_SPEC = {
  "learning_rate": _common.learning_rate(),
  "smoothing": _common.smoothing(),
  "steps": _common.integer(low=1),
  "unit": _common.choice("nats", "bits"),
  "grid": _common.grid(),
  "seeds": _common.reals(increasing=True),
}


def _files(workdir: Path) -> list[Path]:
  return sorted(p for p in workdir.rglob("*") if p.is_file())


def test_check_config_accepts_a_good_config():
  _common.check_config(_toy_config(), TOY_SPEC)


@pytest.mark.parametrize(
  "overrides, key_in_message",
  [
    ({"learning_rate": -0.1}, "learning_rate"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"learning_rate": "0.1"}, "learning_rate"),
    ({"learning_rate": math.nan}, "learning_rate"),
    ({"smoothing": 1.0}, "smoothing"),
    ({"smoothing": -0.01}, "smoothing"),
    ({"steps": 2.5}, "steps"),
    ({"steps": True}, "steps"),
    ({"unit": "hartleys"}, "unit"),
    ({"grid.start": 1.0}, "grid"),  # empty: start == stop
    ({"grid.start": 2.0}, "grid"),  # reversed
    ({"grid.num": 1}, "grid.num"),
    ({"seeds": ()}, "seeds"),
    ({"seeds": (1, 0)}, "seeds"),
  ],
)
def test_check_config_rejects_bad_values(overrides, key_in_message):
  # Plain dicts: a config file can hold any type, whatever ml_collections' overrides allow.
  with pytest.raises(_common.ConfigError, match=f"config.{key_in_message}"):
    _common.check_config(_toy_values(**overrides), TOY_SPEC)


def test_check_config_rejects_unknown_and_missing_keys():
  config = _toy_config()
  config.momentum = 0.9
  with pytest.raises(_common.ConfigError, match="config.momentum is not a known key"):
    _common.check_config(config, TOY_SPEC)
  with pytest.raises(_common.ConfigError, match="config.weight_decay is missing"):
    _common.check_config(_toy_config(), {**TOY_SPEC, "weight_decay": _common.real()})


def test_atomic_write_replaces_whole_files_and_cleans_up(tmp_path, monkeypatch):
  path = tmp_path / "results.json"
  _common.atomic_write(path, "old")
  _common.atomic_write(path, "new")
  assert path.read_text() == "new"

  def crash(src, dst):
    raise KeyboardInterrupt  # Ctrl-C between writing the temp file and renaming it

  monkeypatch.setattr(os, "replace", crash)
  with pytest.raises(KeyboardInterrupt):
    _common.atomic_write(path, "half-written")
  assert path.read_text() == "new"
  assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left


def test_dumps_is_deterministic_and_valid_json_with_nan_and_inf():
  results = {
    "b": [math.nan, math.inf, -math.inf],
    "a": np.float32(0.1),
    "c": {"z": np.arange(3), "y": np.bool_(True)},
  }
  text = _common.dumps(results)
  assert text == _common.dumps(dict(reversed(list(results.items()))))
  parsed = json.loads(text)
  assert list(parsed) == ["a", "b", "c"]
  assert parsed["b"] == ["nan", "inf", "-inf"]
  assert parsed["a"] == float(np.float32(0.1))  # float32 value exactly, not rounded text
  assert parsed["c"] == {"y": True, "z": [0, 1, 2]}
  with pytest.raises(TypeError, match="cannot serialise"):
    _common.dumps({"x": object()})


def test_claim_verdicts_follow_the_measurement():
  holds = _common.claim("c1", "2.4", "s", 0.5, holds=np.bool_(True))
  assert holds["verdict"] == "holds" and holds["holds"] is True and "correction" not in holds
  partly = _common.claim(
    "c2", "2.6", "s", 3, holds=False, condition="on [0, 1]", correction="only on [0, 1]"
  )
  assert (partly["verdict"], partly["holds"], partly["condition"]) == ("partly", False, "on [0, 1]")
  fails = _common.claim("c3", "3.2", "s", 1, holds=False, condition=None, correction="no")
  assert (fails["verdict"], fails["correction"]) == ("fails", "no")
  with pytest.raises(TypeError, match="computed boolean"):
    _common.claim("c4", "1", "s", 1, holds="yes")
  with pytest.raises(ValueError, match="correct statement"):
    _common.claim("c5", "1", "s", 1, holds=False)


def _toy_run(config, workdir):
  workdir.log("steps=%d", config.steps)
  workdir.progress(0, config.steps, "toy")
  workdir.progress(config.steps, config.steps, "toy")
  workdir.add_metrics(
    "toy", np.arange(config.steps), value=config.learning_rate * np.arange(config.steps)
  )
  fig, ax = _common.new_figure()
  ax.plot([0, 1], [0, config.learning_rate])
  workdir.save_figure(fig, "curve.png", caption="a toy curve")
  value = config.learning_rate * config.steps
  return {
    "value": value,
    "claims": [
      _common.claim("toy", "0", "value is 1", value, holds=value == 1.0, correction="it is not")
    ],
  }


def test_run_experiment_writes_every_output(tmp_path):
  results = _common.run_experiment(
    "toy",
    _toy_run,
    _toy_config(),
    tmp_path / "run",
    validate=lambda c: _common.check_config(c, TOY_SPEC),
  )
  names = sorted(p.name for p in _files(tmp_path / "run"))
  assert names == [
    "config.json",
    "curve.png",
    "log.txt",
    "metrics.csv",
    "provenance.json",
    "results.json",
    "timing.json",
  ]
  on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
  assert on_disk == results and on_disk["figures"] == ["curve.png"]
  assert on_disk["figure_captions"] == {"curve.png": "a toy curve"}
  provenance = json.loads((tmp_path / "run" / "provenance.json").read_text())
  assert provenance["experiment"] == "toy" and provenance["seeds"] == {"seeds": [0, 1]}
  assert provenance["packages"]["jax"] == jax.__version__
  assert provenance["packages"]["numpy"] == np.__version__
  assert provenance["devices"] == [str(d) for d in jax.devices()]
  # The process's own command line (`python -m pytest ...`, or xdist's `python -c ...`).
  assert provenance["command"] == _common.command_line()
  assert provenance["command"][0] == "python" and len(provenance["command"]) > 1
  head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
  assert provenance["git"]["commit"] == (head.stdout.strip() if head.returncode == 0 else "unknown")
  assert not {"git", "command", "packages", "started_utc"} & set(on_disk)  # kept out of results
  with open(tmp_path / "run" / "metrics.csv", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert [(r["run"], int(r["step"]), float(r["value"])) for r in rows] == [
    ("toy", t, 0.1 * t) for t in range(10)
  ]
  log = (tmp_path / "run" / "log.txt").read_text()
  assert "toy: step 0/10" in log and "toy: step 10/10, done in" in log
  assert on_disk["claims"][0]["verdict"] == "holds"
  assert json.loads((tmp_path / "run" / "config.json").read_text())["steps"] == 10
  assert "wall_s" in json.loads((tmp_path / "run" / "timing.json").read_text())
  assert "wall_s" not in on_disk
  assert "steps=10" in (tmp_path / "run" / "log.txt").read_text()


def test_bad_config_writes_nothing(tmp_path):
  with pytest.raises(_common.ConfigError, match="learning_rate"):
    _common.run_experiment(
      "toy",
      _toy_run,
      _toy_config(learning_rate=-1.0),
      tmp_path / "run",
      validate=lambda c: _common.check_config(c, TOY_SPEC),
    )
  assert not (tmp_path / "run").exists()


def test_non_empty_workdir_is_refused_unless_overwrite(tmp_path):
  workdir = tmp_path / "run"
  _common.run_experiment("toy", _toy_run, _toy_config(), workdir)
  before = (workdir / "results.json").read_bytes()
  with pytest.raises(_common.WorkdirError, match="--overwrite"):
    _common.run_experiment("toy", _toy_run, _toy_config(steps=20), workdir)
  assert (workdir / "results.json").read_bytes() == before
  _common.run_experiment("toy", _toy_run, _toy_config(steps=20), workdir, overwrite=True)
  assert json.loads((workdir / "results.json").read_text())["value"] == pytest.approx(2.0)


def test_unfinished_run_does_not_block_the_rerun(tmp_path):
  def failing_run(config, workdir):
    fig, _ = _common.new_figure()
    workdir.save_figure(fig, "stale.png")
    raise FloatingPointError("diverged")

  workdir = tmp_path / "run"
  with pytest.raises(FloatingPointError):
    _common.run_experiment("toy", failing_run, _toy_config(), workdir)
  assert _common.is_incomplete_run(workdir)
  _common.run_experiment("toy", _toy_run, _toy_config(steps=20), workdir)  # no --overwrite
  assert not _common.is_incomplete_run(workdir)
  assert not (workdir / "stale.png").exists()  # the failed run's files are gone
  assert json.loads((workdir / "results.json").read_text())["value"] == pytest.approx(2.0)
  # A directory of other files is not an unfinished run: still refused.
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "config.json").write_text("{}")
  with pytest.raises(_common.WorkdirError, match="not empty"):
    _common.run_experiment("toy", _toy_run, _toy_config(), tmp_path / "mine")


def test_unwritable_workdir_is_one_clear_error(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(_common.WorkdirError, match="cannot write to workdir .*file/run"):
    _common.run_experiment("toy", _toy_run, _toy_config(), tmp_path / "file" / "run")


def test_configs_beyond_the_memory_fail_validation(monkeypatch):
  from experiments import config_checks, entropy_comparison

  config = _common.load_config("entropy_comparison", "smoke")
  entropy_comparison.validate(config)
  config.unlock()
  config.grid.num = 2_000_000_000  # 2e9 points × 3 models × 2 curves × 8 bytes = 89 GiB
  monkeypatch.setattr(config_checks, "available_memory_bytes", lambda: 64 * 2**30)
  with pytest.raises(_common.ConfigError, match=r"needs at least 89.4 GiB \(config.grid.num"):
    entropy_comparison.validate(config)
  monkeypatch.setattr(config_checks, "available_memory_bytes", lambda: 128 * 2**30)
  entropy_comparison.validate(config)  # it would fit


def test_progress_on_a_terminal_is_one_updating_line(tmp_path, monkeypatch):
  class Terminal(io.StringIO):
    def isatty(self):
      return True

  terminal = Terminal()
  monkeypatch.setattr(sys, "stderr", terminal)
  monkeypatch.setattr(outputs, "PROGRESS_EVERY_S", 0.0)  # every step also goes to the file
  with _common.logger_to(tmp_path / "log.txt", "tty") as logger:
    workdir = _common.Workdir(tmp_path, logger)
    for done in range(4):
      workdir.progress(done, 3, "fit")
  log, shown = (tmp_path / "log.txt").read_text(), terminal.getvalue()
  for done in (1, 2):
    assert f"] fit: step {done}/3, elapsed" in log  # the file has every line
    assert f"] fit: step {done}/3" not in shown  # the terminal: in place, no log line
    assert f"\rfit: step {done}/3, elapsed" in shown
  assert "\r\x1b[K" in shown.split("] fit: step 3/3, done in")[0][-40:]  # erased first
  assert "] fit: step 0/3" in log and "] fit: step 0/3" in shown


def test_default_workdirs_are_fresh(monkeypatch, tmp_path):
  monkeypatch.setattr(outputs, "RUNS_DIR", tmp_path)
  first = _common.default_workdir("e")
  first.mkdir()
  second = _common.default_workdir("e")
  assert second != first and not second.exists() and second.parent == tmp_path


def test_same_config_gives_byte_identical_results(tmp_path):
  from experiments import entropy_comparison

  config = _common.load_config("entropy_comparison", "smoke")
  for name in ("a", "b"):
    _common.run_experiment(
      "entropy_comparison",
      entropy_comparison.run,
      config,
      tmp_path / name,
      validate=entropy_comparison.validate,
    )
  first, second = ((tmp_path / n / "results.json").read_bytes() for n in ("a", "b"))
  assert first == second
  assert json.loads(first)["claims"]


def _launch(workdir: Path, *args: str) -> subprocess.Popen:
  return subprocess.Popen(
    [
      sys.executable,
      "-m",
      "experiments.entropy_comparison",
      f"--config={E1_SMOKE}",
      f"--workdir={workdir}",
      *args,
    ],
    cwd=REPO_ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def test_command_line_errors_are_one_line_and_write_nothing(tmp_path):
  taken = tmp_path / "taken"
  taken.mkdir()
  (taken / "results.json").write_text("{}")
  cases = {  # name: (extra flags, workdir, expected text in the error line)
    "bad_value": (["--config.grid.num=1"], tmp_path / "a", "config.grid.num must be >= 2"),
    "unknown_key": (["--config.learning_rat=1"], tmp_path / "b", "unknown config key"),
    "stray_argv": (["extra"], tmp_path / "c", "unexpected arguments"),
    "taken_workdir": ([], taken, "--overwrite"),
    "only_check_args": (
      ["--only_check_args", "--config.grid.num=1"],
      tmp_path / "d",
      "config.grid.num must be >= 2",
    ),
  }
  procs = {name: _launch(workdir, *flags) for name, (flags, workdir, _) in cases.items()}
  for name, proc in procs.items():
    _, stderr = proc.communicate(timeout=120)
    flags, workdir, expected = cases[name]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (name, stderr)
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], (
      name,
      stderr,
    )
    if workdir != taken:
      assert not workdir.exists(), name
  assert [p.name for p in taken.iterdir()] == ["results.json"]
  assert (taken / "results.json").read_text() == "{}"


def test_help_and_print_config(tmp_path):
  help_proc = _launch(tmp_path / "h", "--help")
  print_proc = _launch(tmp_path / "p", "--print_config", "--config.grid.num=7")
  stdout, _ = help_proc.communicate(timeout=120)
  for flag in ("--workdir:", "--[no]overwrite:", "--[no]print_config:", "--config:"):
    assert flag in stdout, flag
  # Every config field, with its default and the comment from configs/entropy_comparison.py.
  config = _common.load_config("entropy_comparison")
  comments = _common.config_field_comments("entropy_comparison")
  assert comments["grid.num"] == "number of points (spacing 0.01)"
  for key, _ in _common._flatten(config):
    line = next(line for line in stdout.splitlines() if f"--config.{key}=" in line)
    assert line.strip().startswith(f"--config.{key}=") and comments[key] in line, line
  assert "  --config.grid.num=2001  " in stdout and "--config.entropy_unit=nats  " in stdout
  assert "--config.intercepts='(0.0, 1.0, -10.0)'  " in stdout  # quoted for the shell
  stdout, stderr = print_proc.communicate(timeout=120)
  assert print_proc.returncode == 0, stderr
  printed = json.loads(stdout)
  assert printed["grid"]["num"] == 7 and printed["entropy_unit"] == "nats"
  assert set(printed) == set(config.to_dict())
  assert not (tmp_path / "h").exists() and not (tmp_path / "p").exists()


def _assert_complete(workdir: Path) -> None:
  """Every file is whole: no temp files, JSON parses, PNG decodes, log is text."""
  import matplotlib.image

  for path in _files(workdir):
    assert not path.name.startswith("."), f"temp file left: {path}"
    if path.suffix == ".json":
      json.loads(path.read_text("utf-8"))
    elif path.suffix == ".png":
      assert matplotlib.image.imread(path).ndim == 3
    else:
      path.read_text("utf-8")


def test_interrupted_run_leaves_only_complete_files(tmp_path):
  # (signal, a file and text that mark the moment to send it): right after config.json,
  # and while the figure is drawn (the log already has the grid means).
  cases = {
    "sigint": (signal.SIGINT, "config.json", ""),
    "sigterm": (signal.SIGTERM, "log.txt", "grid means"),
  }
  procs = {name: _launch(tmp_path / name) for name in cases}
  for name, proc in procs.items():
    signum, marker, text = cases[name]
    deadline = time.monotonic() + 120
    while proc.poll() is None:
      with contextlib.suppress(FileNotFoundError):
        if text in (tmp_path / name / marker).read_text("utf-8"):
          break
      assert time.monotonic() < deadline, "the run never got there"
      time.sleep(0.005)
    proc.send_signal(signum)
  for name, proc in procs.items():
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode in (0, 128 + cases[name][0]), stderr  # 0: done before it
    if proc.returncode == 130:
      assert "error: interrupted" in stderr
    _assert_complete(tmp_path / name)
    # An interrupted run is recognised as unfinished: its rerun will not be refused.
    assert _common.is_incomplete_run(tmp_path / name) == (proc.returncode != 0)
