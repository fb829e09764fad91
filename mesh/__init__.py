"""mesh: a multi-model serving mesh speaking the KServe v2 protocol.

See docs/design.md for the map of processes and README.md for how to run them.
"""

__version__ = "0.1.0"
