"""Generated gRPC stubs (built from protos/ at install time; never edited by hand).

Their descriptors live in ``POOL``, not in protobuf's default pool: tritonclient defines the same
``inference.*`` symbols from another revision of the protos, and keeping ours apart lets one
process import both (setup.py rewrites the generated modules to use it).
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
