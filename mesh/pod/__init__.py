"""The serving pod: a KServe v2 data plane over a capacity-bounded model cache."""
