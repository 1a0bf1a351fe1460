"""Test-session setup shared by every test module.

Reproducible property tests. Hypothesis (since 6.1xx) also draws literals harvested from
every local module in ``sys.modules``, a pool that grows with the modules the process has
imported so far: under pytest-xdist a "derandomized" test then draws different examples
depending on which tests ran before it on its worker, and a failure seen in the full suite
does not reproduce when the test runs alone. The pool is pinned empty here (Hypothesis's
own edge-case constants, ±0, ±inf, the float limits, subnormals, stay in use), so each
property test draws the same examples alone, in any order and on any worker.
"""

from hypothesis.internal.conjecture import providers as _providers

if hasattr(_providers, "_get_local_constants") and hasattr(_providers, "_local_constants"):
  _providers._get_local_constants = lambda: _providers._local_constants  # stays empty
