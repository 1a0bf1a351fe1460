r"""Runs every registered experiment and writes ``REPORT.md``: each seed claim and its verdict.

From the repository root (``make run`` does this with a fresh ``runs/<timestamp>``)::

    python -m experiments.reproduce --workdir=runs/all
    python -m experiments.reproduce --smoke --workdir=/tmp/all-smoke   # small configs, fast
    python -m experiments.reproduce --workdir=runs/lr \
        --override=train_logistic.synthetic.learning_rate=0.5   # NAME.FIELD=VALUE, repeatable

Each experiment runs into ``<workdir>/<name>/`` with its default config (``configs/<name>.py``,
or its ``:smoke`` variant with ``--smoke``); all configs are validated before anything runs.
One log line per experiment gives its claims and wall time. ``REPORT.md`` is built from the
``results.json`` files written by this run only: a claims table (claim | seed § | measured |
verdict), each experiment's figures, an errata section for every claim whose verdict is not
"holds", and the wall times. To register an experiment, add its name to ``EXPERIMENTS`` (the
module interface is described at the top of ``experiments/_common.py``).
"""

import ast
import importlib
import json
import sys
import time
from pathlib import Path

from experiments import _common, seed_text

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


def parse_override(text: str) -> tuple[str, str, object]:
  """``"NAME.FIELD=VALUE"`` → (experiment, dotted field, value); ConfigError if malformed.

  VALUE is read as a Python literal (``0.5``, ``20_000``, ``'(0.0, 1.0)'``, ``True``;
  ``true``/``false`` too), anything else as a string (``bits``), as ``--config.FIELD`` does.
  """
  target, eq, raw = text.partition("=")
  name, dot, field = target.strip().partition(".")
  if not (eq and dot and name and field):
    raise _common.ConfigError(
      f"--override={text!r} must read NAME.FIELD=VALUE, e.g. train_logistic.num_checkpoints=20"
    )
  raw = raw.strip()
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = {"true": True, "false": False}.get(raw.lower(), raw)
  return name, field, value


def _apply_overrides(name: str, config, overrides) -> None:
  """Sets the ``(field, value)`` pairs on ``config`` (locked: unknown fields are rejected)."""
  for field, value in overrides:
    *parents, leaf = field.split(".")
    node = config
    try:
      for part in parents:
        node = node[part]
      if leaf not in node:
        raise KeyError(leaf)
      node[leaf] = value
    except (KeyError, AttributeError):
      raise _common.ConfigError(
        f"--override {name}.{field}: config.{field} is not a field of configs/{name}.py"
      ) from None
    except TypeError:
      raise _common.ConfigError(
        f"--override {name}.{field}: config.{field} must be of type "
        f"{type(node[leaf]).__name__}, got {value!r}"
      ) from None


def validator(module):
  """An experiment's ``validate``; without one, the bounds its config file declares."""
  return getattr(module, "validate", _common.check_declared)


def _load(names, smoke: bool, overrides=()) -> list[tuple[str, object, object]]:
  """(name, module, validated config) for each experiment; ConfigError before any compute."""
  parsed = [parse_override(text) for text in overrides]
  for name, field, _ in parsed:
    if name not in names:
      raise _common.ConfigError(
        f"--override {name}.{field}: {name!r} is not among the experiments run ({', '.join(names)})"
      )
  loaded = []
  for name in names:
    module = importlib.import_module(f"experiments.{name}")
    config = _common.load_config(name, "smoke" if smoke else None)
    _apply_overrides(name, config, [(f, v) for n, f, v in parsed if n == name])
    validator(module)(config)
    loaded.append((name, module, config))
  return loaded


def reproduce(
  workdir, *, smoke: bool = False, overwrite: bool = False, names=EXPERIMENTS, overrides=()
) -> Path:
  """Runs ``names`` into ``workdir/<name>/`` and writes ``workdir/REPORT.md``; returns it.

  ``overrides``: ``"NAME.FIELD=VALUE"`` strings (:func:`parse_override`) applied to the
  configs before validation. A workdir left by an unfinished reproduction (no REPORT.md)
  is reused, its experiments' directories included. An experiment that raises is reported
  as failed (the others still run); the function then raises RuntimeError after writing
  the report.
  """
  experiments = _load(names, smoke, overrides)
  resumed = _common.is_incomplete_run(workdir)
  root = _common.prepare_workdir(workdir, overwrite=overwrite)
  _common.write_json(
    root / _common.PROVENANCE_FILE,
    {
      **_common.provenance("reproduce"),
      "experiments": list(names),
      "smoke": smoke,
      "overrides": list(overrides),
    },
  )
  with _common.logger_to(root / "log.txt", "reproduce") as logger:
    errors = {}
    for i, (name, module, config) in enumerate(experiments, 1):
      start = time.perf_counter()
      try:
        results = _common.run_experiment(
          name,
          module.run,
          config,
          root / name,
          validate=validator(module),
          overwrite=overwrite or resumed,
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
      root / "REPORT.md", render_report(root, names, errors, total_s, smoke, overrides)
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


def render_report(
  root: Path, names, errors: dict, total_s: float, smoke: bool, overrides=()
) -> str:
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
    "The seed is a short Chinese text on entropy and cross-entropy (sections 1–5). Each claim "
    "below cites its section; [the passages](#the-seeds-passages) are quoted after the "
    "errata, in the original and in English.",
    "",
    f"{len(runs)} of {len(names)} experiments ran{' (smoke configs)' if smoke else ''}; "
    f"{sum(c['verdict'] == 'holds' for _, c in claims)} of {len(claims)} claims hold. "
    "Every verdict below is computed from that run's `results.json`.",
  ]
  if overrides:
    lines += ["", "Config overrides: " + ", ".join(f"`{o}`" for o in overrides) + "."]
  lines += [
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
  lines += _seed_passages(c["seed_section"] for _, c in claims)
  for name, run in runs.items():
    lines += ["", f"## {name}", ""]
    for key, value in run["results"].get("summary", {}).items():
      lines.append(f"- {key}: {_cell(value)}")
    captions = run["results"].get("figure_captions", {})
    for f in run["results"]["figures"]:
      caption = captions.get(f, f"{name}: {f}")
      lines += ["", f"![{caption}]({name}/{f})", "", f"*{caption}*"]
  lines += ["", "## Wall time", "", "| experiment | wall time (s) |", "|---|---|"]
  lines += [f"| {name} | {run['timing']['wall_s']:.2f} |" for name, run in runs.items()]
  lines += [
    "",
    f"Total, imports and compilation included: **{total_s:.1f} s** "
    f"({'within' if total_s <= TIME_BUDGET_S else 'over'} the {TIME_BUDGET_S:.0f} s "
    "budget).",
  ]
  lines += _provenance_lines(root)
  return "\n".join(lines) + "\n"


def _seed_passages(seed_sections) -> list[str]:
  """The "seed's passages" section: each cited section's passage, original and English."""
  cited = sorted(
    {s for field in seed_sections for s in seed_text.sections_cited(field)},
    key=lambda s: tuple(int(p) if p.isdigit() else 0 for p in s.split(".")),
  )
  lines = ["", "## The seed's passages", ""]
  for section in cited:
    if section in seed_text.SECTIONS:
      title, original, english = seed_text.SECTIONS[section]
      lines += [f"- **§{section} {title}.** “{english}” (原文: {original})"]
    else:
      lines += [f"- **§{section}**: not a section of the seed."]
  return lines


def _provenance_lines(root: Path) -> list[str]:
  """Where the numbers come from: code, versions, machine, command (root provenance.json)."""
  path = root / _common.PROVENANCE_FILE
  if not path.is_file():
    return []
  p = json.loads(path.read_text("utf-8"))
  git = p["git"]
  commit = git["commit"] + (" (with uncommitted changes)" if git.get("dirty") else "")
  versions = ", ".join(f"{k} {v}" for k, v in p["packages"].items())
  return [
    "",
    "## Provenance",
    "",
    f"- code: git commit {commit}",
    f"- python {p['python']}; {versions}",
    f"- platform: {p['platform']}; devices: {', '.join(p.get('devices', []))}; x64: {p.get('x64')}",
    f"- command: `{' '.join(p['command'])}` (started {p['started_utc']})",
    "- each experiment's directory holds its `config.json` (the resolved config, seeds "
    "included), `provenance.json`, `log.txt` and, for training runs, `metrics.csv`",
  ]


def main() -> None:
  """absl entry point: ``--workdir``, ``--smoke``, ``--overwrite``, ``--only``, ``--override``,
  ``--print_config`` and absl's ``--only_check_args`` (validate every config, run nothing)."""
  from absl import flags

  flags.DEFINE_string("workdir", None, "Output directory (default: runs/reproduce-<time>).")
  flags.DEFINE_bool("smoke", False, "Use every experiment's :smoke config (fast).")
  flags.DEFINE_bool("overwrite", False, "Allow reusing a non-empty --workdir.")
  flags.DEFINE_list("only", None, f"Run only these of {', '.join(EXPERIMENTS)}.")
  flags.DEFINE_multi_string(
    "override",
    [],
    "NAME.FIELD=VALUE: set a config field of experiment NAME, as its own "
    "--config.FIELD=VALUE would (repeatable), e.g. --override=train_logistic.num_checkpoints=20.",
  )
  flags.DEFINE_bool(
    "print_config", False, "Print every resolved config (JSON, by experiment), validate, exit."
  )
  flag_values = flags.FLAGS

  def selected():
    names = tuple(flag_values.only or EXPERIMENTS)
    unknown = sorted(set(names) - set(EXPERIMENTS))
    if unknown:
      raise _common.ConfigError(
        f"--only: unknown experiments {unknown}; registered: {list(EXPERIMENTS)}"
      )
    return _load(names, flag_values.smoke, flag_values.override)

  def body():
    if flag_values.print_config:
      configs = {name: config.to_dict() for name, _, config in selected()}
      sys.stdout.write(_common.dumps(configs).decode("utf-8"))
      return
    try:
      reproduce(
        flag_values.workdir or _common.default_workdir("reproduce"),
        smoke=flag_values.smoke,
        overwrite=flag_values.overwrite,
        names=tuple(name for name, _, _ in selected()),
        overrides=flag_values.override,
      )
    except RuntimeError as error:
      _common._die(str(error), 1)

  _common.run_app(body, check=selected)


if __name__ == "__main__":
  main()
