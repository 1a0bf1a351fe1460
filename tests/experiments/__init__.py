"""Tests of the experiments: each smoke run (see _smoke.py) checked against an independent computation."""
