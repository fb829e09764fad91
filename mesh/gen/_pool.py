"""The descriptor pool of mesh's generated stubs. Generated: do not edit.

A private pool keeps mesh's `inference.*` messages apart from those that tritonclient or the
kserve SDK register in protobuf's default pool, so all of them can live in one process.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
