"""Placement: the mesh's decisions as pure functions of a snapshot and `now`.

No I/O, no clock, no randomness a seed cannot fix: unit-tested, property-tested and driven at
scale by bench/simulate.py. docs/placement.md gives the rules and their trade-offs.

- snapshot.py: the frozen views decisions read (PodView, ModelRequirements, Snapshot), built
  from the cluster records.
- choose.py: which pod takes a cache miss (choose_pod).
- eviction.py: which models a pod unloads to make room (choose_victims, plan_eviction).
- copies.py: when a model gets another copy and when an extra copy goes.
- failures.py: failed loads, remembered per (model, pod) for a while, with an attempt cap.
"""
