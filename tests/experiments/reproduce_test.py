"""Tests of ``experiments/reproduce.py``: the report is built from the run's results."""

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import jax
import ml_collections
import pytest

from experiments import _common, reproduce, seed_text

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_smoke_reproduction_writes_the_report(tmp_path):
  report = reproduce.reproduce(tmp_path / "all", smoke=True)
  text = report.read_text("utf-8")
  assert "| experiment | claim | seed § | measured | verdict |" in text
  for name in reproduce.EXPERIMENTS:
    results = json.loads((tmp_path / "all" / name / "results.json").read_text("utf-8"))
    for claim in results["claims"]:  # one table row per claim, verdict from the JSON
      row = next(
        line for line in text.splitlines() if line.startswith(f"| {name} | {claim['statement']} |")
      )
      assert f"| {claim['seed_section']} |" in row
      assert {"holds": "**holds**", "partly": "**holds only partly: ", "fails": "**fails**"}[
        claim["verdict"]
      ] in row
      if claim["verdict"] != "holds":
        assert claim["correction"] in text.split("## Errata")[1]
    for figure in results["figures"]:
      caption = results["figure_captions"][figure]
      assert f"![{caption}]({name}/{figure})\n\n*{caption}*" in text
      assert (tmp_path / "all" / name / figure).is_file()
    passages = text.split("## The seed's passages")[1].split("\n## ")[0]
    for claim in results["claims"]:  # every cited section is quoted, in English
      for section in seed_text.sections_cited(claim["seed_section"]):
        english = seed_text.SECTIONS[section][2]
        assert f"- **§{section} {seed_text.SECTIONS[section][0]}.** “{english}”" in passages
  assert "Total, imports and compilation included" in text
  provenance = json.loads((tmp_path / "all" / "provenance.json").read_text("utf-8"))
  assert f"- code: git commit {provenance['git']['commit']}" in text
  assert f"jax {jax.__version__}" in text.split("## Provenance")[1]
  log = (tmp_path / "all" / "log.txt").read_text("utf-8")
  n = len(reproduce.EXPERIMENTS)
  for i, name in enumerate(reproduce.EXPERIMENTS, 1):
    assert f"[{i}/{n}] {name}" in log


def _fake_experiment(monkeypatch, name, run):
  """Registers ``experiments.<name>`` / ``configs.<name>`` modules for reproduce."""
  module = types.ModuleType(f"experiments.{name}")
  module.run, module.validate = (
    run,
    lambda config: _common.check_config(config, {"value": _common.real()}),
  )
  config_module = types.ModuleType(f"configs.{name}")
  config_module.get_config = lambda variant=None: ml_collections.ConfigDict({"value": 2.0})
  monkeypatch.setitem(sys.modules, module.__name__, module)
  monkeypatch.setitem(sys.modules, config_module.__name__, config_module)


def test_report_lists_failed_claims_and_experiments(tmp_path, monkeypatch):
  def wrong_run(config, workdir):
    del workdir
    return {
      "claims": [
        _common.claim(
          "x-is-one",
          "9.9",
          "x equals one",
          config.value,
          holds=config.value == 1.0,
          correction=f"x equals {config.value:g}",
        )
      ]
    }

  def broken_run(config, workdir):
    raise FloatingPointError("diverged")

  _fake_experiment(monkeypatch, "wrong", wrong_run)
  _fake_experiment(monkeypatch, "broken", broken_run)
  with pytest.raises(RuntimeError, match="broken"):
    reproduce.reproduce(tmp_path / "r", names=("wrong", "broken"))
  text = (tmp_path / "r" / "REPORT.md").read_text("utf-8")
  assert "| wrong | x equals one | 9.9 | 2 | **fails** |" in text
  assert "Correct statement: x equals 2." in text
  assert "| broken | (experiment failed: FloatingPointError: diverged) |" in text


def test_overrides_reach_the_experiments(tmp_path, monkeypatch):
  def run(config, workdir):
    del workdir
    return {
      "claims": [
        _common.claim(
          "x-is-one",
          "9.9",
          "x equals one",
          config.value,
          holds=config.value == 1.0,
          correction="no",
        )
      ]
    }

  _fake_experiment(monkeypatch, "toy", run)
  reproduce.reproduce(tmp_path / "r", names=("toy",), overrides=("toy.value=1",))
  text = (tmp_path / "r" / "REPORT.md").read_text("utf-8")
  assert "| toy | x equals one | 9.9 | 1 | **holds** |" in text  # the default 2.0 fails
  assert "Config overrides: `toy.value=1`." in text
  assert json.loads((tmp_path / "r" / "toy" / "config.json").read_text()) == {"value": 1.0}
  for override, message in (
    ("toy.valeu=1", "config.valeu is not a field of configs/toy.py"),
    ("other.value=1", "'other' is not among the experiments run"),
    ("toy.value", "must read NAME.FIELD=VALUE"),
    ("toy.value=two", "config.value must be of type float, got 'two'"),
  ):
    with pytest.raises(_common.ConfigError, match=re.escape(message)):
      reproduce.reproduce(tmp_path / "bad", names=("toy",), overrides=(override,))
    assert not (tmp_path / "bad").exists()


def test_unfinished_reproduction_does_not_block_the_rerun(tmp_path, monkeypatch):
  def run(config, workdir):
    del config, workdir
    return {"claims": []}

  def interrupted(config, workdir):
    raise KeyboardInterrupt

  _fake_experiment(monkeypatch, "done", run)
  _fake_experiment(monkeypatch, "cut", interrupted)
  with pytest.raises(KeyboardInterrupt):
    reproduce.reproduce(tmp_path / "r", names=("done", "cut"))
  assert (tmp_path / "r" / "done" / "results.json").is_file()
  assert not (tmp_path / "r" / "REPORT.md").exists()
  monkeypatch.setattr(sys.modules["experiments.cut"], "run", run)
  report = reproduce.reproduce(tmp_path / "r", names=("done", "cut"))  # no --overwrite
  assert "2 of 2 experiments ran" in report.read_text("utf-8")


def test_bad_config_or_taken_workdir_fail_before_running(tmp_path, monkeypatch):
  calls = []
  _fake_experiment(monkeypatch, "counted", lambda config, workdir: calls.append(1))
  monkeypatch.setattr(
    sys.modules["configs.counted"],
    "get_config",
    lambda variant=None: ml_collections.ConfigDict({"value": "two"}),
  )
  with pytest.raises(_common.ConfigError, match="config.value must be a real number"):
    reproduce.reproduce(tmp_path / "bad", names=("counted",))
  assert not (tmp_path / "bad").exists() and not calls
  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "REPORT.md").write_text("old")
  with pytest.raises(_common.WorkdirError):
    reproduce.reproduce(tmp_path / "taken", smoke=True)
  assert (tmp_path / "taken" / "REPORT.md").read_text() == "old"


def test_command_line_rejects_unknown_experiment(tmp_path):
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.reproduce", "--only=e99", f"--workdir={tmp_path}/r"],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith("error: --only: unknown experiments ['e99']")
  assert not (tmp_path / "r").exists()
