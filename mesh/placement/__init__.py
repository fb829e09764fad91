"""Placement: the mesh's decisions as pure functions of a snapshot and `now`.

No I/O, no clock, no randomness a seed cannot fix: unit-tested, property-tested and driven at
scale by bench/simulate.py.
"""
