"""The puller: the pod's sidecar that fetches model artifacts from object storage into a bounded
local disk cache shared with its pod (docs/puller.md).

    pod ──Pull(model id, StorageRef)─────────▶ PullerService ──▶ Puller ──▶ Fetcher ──▶ storage
                                                                   │
                                                                DiskCache (bounded, LRU, refcounted)

The gRPC transport (service.py) converts and calls the core (core.py), which has no gRPC in it;
each storage type is one module under backends/ behind the Fetcher protocol (fetcher.py).
"""
