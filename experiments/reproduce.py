"""Runs every registered experiment and writes ``REPORT.md``: each seed claim and its verdict.

From the repository root (``make run`` does this with a fresh ``runs/<timestamp>``)::

    python -m experiments.reproduce --workdir=runs/all
    python -m experiments.reproduce --smoke --workdir=/tmp/all-smoke   # small configs, fast

Each experiment runs into ``<workdir>/<name>/`` with its default config (``configs/<name>.py``,
or its ``:smoke`` variant with ``--smoke``); all configs are validated before anything runs.
One log line per experiment gives its claims and wall time. ``REPORT.md`` is built from the
``results.json`` files written by this run only: a claims table (claim | seed § | measured |
verdict), each experiment's figures, an errata section for every claim whose verdict is not
"holds", and the wall times. To register an experiment, add its name to ``EXPERIMENTS`` (the
module interface is described at the top of ``experiments/_common.py``).
"""

import importlib
import json
import time
from pathlib import Path

from experiments import _common

START = time.perf_counter()  # the total wall time counts imports and every compile

EXPERIMENTS = (
  "entropy_comparison",  # E1, seed §2.1-2.6
  "cross_entropy",  # E2, seed §3.1-3.2
  "order_matters",  # E3, seed §3.3
  "gradient_check",  # E4, seed §4.2
  "train_logistic",  # E5, seed §4.1-4.2, 5
  "softmax_regression",  # E6, seed §2.2-2.3
  "model_comparison",  # E7, seed §2.6, 3.2, 5
  "vocab_scale",  # E8, seed §3, 5 at vocabulary scale (SPEC §7)
)
TIME_BUDGET_S = 60.0
_VERDICT_TEXT = {"holds": "holds", "partly": "holds only partly", "fails": "fails"}


def _load(names, smoke: bool) -> list[tuple[str, object, object]]:
  """(name, module, validated config) for each experiment; ConfigError before any compute."""
  loaded = []
  for name in names:
    module = importlib.import_module(f"experiments.{name}")
    config = _common.load_config(name, "smoke" if smoke else None)
    module.validate(config)
    loaded.append((name, module, config))
  return loaded


def reproduce(workdir, *, smoke: bool = False, overwrite: bool = False, names=EXPERIMENTS) -> Path:
  """Runs ``names`` into ``workdir/<name>/`` and writes ``workdir/REPORT.md``; returns it.

  An experiment that raises is reported as failed (the others still run); the function
  then raises RuntimeError after writing the report.
  """
  experiments = _load(names, smoke)
  root = _common.prepare_workdir(workdir, overwrite=overwrite)
  with _common.logger_to(root / "log.txt", "reproduce") as logger:
    errors = {}
    for i, (name, module, config) in enumerate(experiments, 1):
      start = time.perf_counter()
      try:
        results = _common.run_experiment(
          name, module.run, config, root / name, validate=module.validate, overwrite=overwrite
        )
        summary = f"{len(results['claims'])} claims"
      except Exception as error:  # report it and go on with the others
        errors[name] = f"{type(error).__name__}: {error}"
        summary = f"FAILED ({errors[name]})"
        logger.exception("%s failed", name)
      logger.info(
        "[%d/%d] %s: %s in %.1f s", i, len(experiments), name, summary, time.perf_counter() - start
      )
    total_s = time.perf_counter() - START
    report = _common.atomic_write(
      root / "REPORT.md", render_report(root, names, errors, total_s, smoke)
    )
    logger.info("report: %s (total %.1f s, budget %.0f s)", report, total_s, TIME_BUDGET_S)
  if errors:
    raise RuntimeError(f"experiments failed: {', '.join(errors)} (see {report})")
  return report


def _cell(value) -> str:
  """A measured value as one Markdown table cell."""
  if isinstance(value, dict):
    return "; ".join(f"{k} = {_cell(v)}" for k, v in value.items())
  if isinstance(value, list):
    return "[" + ", ".join(_cell(v) for v in value) + "]"
  if isinstance(value, float):
    return f"{value:.6g}"
  return str(value).replace("|", "\\|").replace("\n", " ")


def render_report(root: Path, names, errors: dict, total_s: float, smoke: bool) -> str:
  """REPORT.md's text, from ``root/<name>/results.json`` and ``timing.json`` on disk."""
  runs = {}
  for name in names:
    if name not in errors:
      runs[name] = {
        f: json.loads((root / name / f"{f}.json").read_text("utf-8")) for f in ("results", "timing")
      }
  claims = [(name, c) for name, run in runs.items() for c in run["results"]["claims"]]
  lines = [
    "# Reproduction of the seed's claims",
    "",
    f"{len(runs)} of {len(names)} experiments ran{' (smoke configs)' if smoke else ''}; "
    f"{sum(c['verdict'] == 'holds' for _, c in claims)} of {len(claims)} claims hold. "
    "Every verdict below is computed from that run's `results.json`.",
    "",
    "| experiment | claim | seed § | measured | verdict |",
    "|---|---|---|---|---|",
  ]
  for name, c in claims:
    verdict = _VERDICT_TEXT[c["verdict"]]
    if c["verdict"] == "partly":
      verdict += f": {_cell(c['condition'])}"
    lines.append(
      f"| {name} | {_cell(c['statement'])} | {c['seed_section']} | "
      f"{_cell(c['measured'])} | **{verdict}** |"
    )
  for name, error in errors.items():
    lines.append(f"| {name} | (experiment failed: {_cell(error)}) | | | **not run** |")
  lines += ["", "## Errata", ""]
  wrong = [(name, c) for name, c in claims if c["verdict"] != "holds"]
  lines += [
    f"- **§{c['seed_section']} ({name}, {c['id']})**: the seed says “{c['statement']}”"
    f" — {_VERDICT_TEXT[c['verdict']]}. Correct statement: {c['correction']}."
    for name, c in wrong
  ] or ["None: every claim tested holds."]
  for name, run in runs.items():
    lines += ["", f"## {name}", ""]
    for key, value in run["results"].get("summary", {}).items():
      lines.append(f"- {key}: {_cell(value)}")
    lines += [""] + [f"![{name}: {f}]({name}/{f})" for f in run["results"]["figures"]]
  lines += ["", "## Wall time", "", "| experiment | wall time (s) |", "|---|---|"]
  lines += [f"| {name} | {run['timing']['wall_s']:.2f} |" for name, run in runs.items()]
  lines += [
    "",
    f"Total, imports and compilation included: **{total_s:.1f} s** "
    f"({'within' if total_s <= TIME_BUDGET_S else 'over'} the {TIME_BUDGET_S:.0f} s "
    "budget).",
  ]
  return "\n".join(lines) + "\n"


def main() -> None:
  """absl entry point: ``--workdir``, ``--smoke``, ``--overwrite``, ``--only``."""
  from absl import flags

  flags.DEFINE_string("workdir", None, "Output directory (default: runs/reproduce-<time>).")
  flags.DEFINE_bool("smoke", False, "Use every experiment's :smoke config (fast).")
  flags.DEFINE_bool("overwrite", False, "Allow reusing a non-empty --workdir.")
  flags.DEFINE_list("only", None, f"Run only these of {', '.join(EXPERIMENTS)}.")
  flag_values = flags.FLAGS

  def body():
    names = tuple(flag_values.only or EXPERIMENTS)
    unknown = sorted(set(names) - set(EXPERIMENTS))
    if unknown:
      raise _common.ConfigError(
        f"--only: unknown experiments {unknown}; registered: {list(EXPERIMENTS)}"
      )
    try:
      reproduce(
        flag_values.workdir or _common.default_workdir("reproduce"),
        smoke=flag_values.smoke,
        overwrite=flag_values.overwrite,
        names=names,
      )
    except RuntimeError as error:
      _common._die(str(error), 1)

  _common.run_app(body)


if __name__ == "__main__":
  main()
