"""Process-wide runtime policy, applied once before torch is first imported.

OpenMP worker threads that spin while waiting for work halve throughput on a small busy machine (2 cores:
the CLI ran 4-5x slower than the same job with ``OMP_WAIT_POLICY=PASSIVE``). The policy is read by the OpenMP
runtime when torch loads, so it must be set before that: `polymodal/__init__` calls `configure_threads` first.
A value the user already set in the environment is kept."""

from __future__ import annotations

import os
import sys


def configure_threads() -> bool:
    """Default OpenMP threads to sleep while idle (``OMP_WAIT_POLICY=PASSIVE``) unless the environment says
    otherwise. Returns whether the policy can still take effect (torch not yet imported)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return "torch" not in sys.modules
