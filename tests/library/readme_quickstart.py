"""Runs the README's first Python example against an installed xent_jax.

``make install-check`` builds a fresh virtual environment, ``pip install .`` (the library
alone, no extras) and runs this script there: the example must run and import nothing
that only an extra provides. Run it as a script (``python tests/library/readme_quickstart.py``):
then ``xent_jax`` comes from the environment, not from the checkout.
"""

import re
import sys
from pathlib import Path

# Modules of the extras, which `import xent_jax` and the quick start must not need.
EXTRAS = ("absl", "chex", "distrax", "matplotlib", "ml_collections", "scipy", "sklearn")


def first_python_block(readme: str) -> str:
  """The first fenced ```python block of the README."""
  return re.search(r"```python\n(.*?)```", readme, re.DOTALL).group(1)


def main() -> None:
  readme = (Path(__file__).resolve().parents[2] / "README.md").read_text("utf-8")
  exec(compile(first_python_block(readme), "README.md", "exec"), {})
  import xent_jax

  imported = [name for name in EXTRAS if name in sys.modules]
  if imported:
    sys.exit(f"error: the quick start imported {imported}, which only the extras install")
  print(f"ok: the README quick start ran with {xent_jax.__file__}")


if __name__ == "__main__":
  main()
