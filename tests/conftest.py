"""Test setup shared by every test module.

Multi-device behaviour is tested on CPU: XLA must be told to expose 8 host
devices before jax is first imported, which is why this runs at import time
of the conftest, ahead of every test module.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
