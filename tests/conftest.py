"""Test setup shared by every test module.

Multi-device behaviour is tested on CPU: XLA must be told to expose 8 host
devices before jax is first imported, which is why this runs at import time
of the conftest, ahead of every test module.

Google Cloud client libraries look for credentials on a GCE metadata server
(a link-local address) when nothing else is configured; tests never leave the
machine, so that lookup is switched off and pointed at a closed loopback port.

Many tests start `launch/*.py` in a subprocess on the same tiny configs; a
persistent compilation cache shared by the whole session (these processes
included, through the environment) lets each compile once.
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
for _name in ("GCE_METADATA_HOST", "GCE_METADATA_IP", "GCE_METADATA_ROOT"):
  os.environ.setdefault(_name, "127.0.0.1:1")
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # No control-plane calls.

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
