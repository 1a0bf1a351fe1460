"""The scaffolding every experiment test shares: one smoke run per test class.

A test class names its experiment and reads what the run wrote::

  class EntropyComparisonTest(_smoke.SmokeRun):
    experiment = "entropy_comparison"

    def test_integral(self):
      self.results["models"]  # as written to self.workdir / "results.json"

``setUpClass`` loads ``configs/<experiment>.py:smoke``, validates it as ``make run`` does (the
module's ``validate``, or the bounds its config file declares) and runs
``experiments/<experiment>.run`` into a fresh temporary workdir (removed after the class), once
for the class, with rank promotion raising (an implicit broadcast in an experiment is a bug).
A subclass that needs more (an independent dataset, the problem redone) extends
``setUpClass`` after calling ``super().setUpClass()``.
"""

from __future__ import annotations

import importlib
import json
import shutil
import tempfile
from pathlib import Path

import chex
import jax

from experiments import _common, reproduce


class SmokeRun(chex.TestCase):
  """Runs ``experiment``'s smoke config once; ``config``, ``workdir``, ``results``, ``module``."""

  experiment: str = ""  # the module name under experiments/ (and configs/)

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    if not cls.experiment:
      raise TypeError(f"{cls.__name__}: set `experiment` to the experiment's module name")
    cls.module = importlib.import_module(f"experiments.{cls.experiment}")
    cls.config = _common.load_config(cls.experiment, "smoke")
    root = tempfile.mkdtemp(prefix=f"{cls.experiment}-")
    cls.addClassCleanup(shutil.rmtree, root, ignore_errors=True)
    cls.workdir = Path(root) / "run"
    with jax.numpy_rank_promotion("raise"):
      _common.run_experiment(
        cls.experiment,
        cls.module.run,
        cls.config,
        cls.workdir,
        validate=reproduce.validator(cls.module),
      )
    cls.results = json.loads((cls.workdir / "results.json").read_text("utf-8"))
