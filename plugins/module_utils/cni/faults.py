"""Fault injection for the crash-safety tests.

The engine marks the moments where a crash would leave the most behind with
`faults.point("host_local.after_lease_write")`. Normally that is one environment lookup. When
`CNIKIT_FAULT` names the point, the process dies there:

    CNIKIT_FAULT=<name>          SIGKILL itself (kill -9: no finally, no atexit, no flush)
    CNIKIT_FAULT=<name>:raise    raise FaultInjected instead (an ordinary failure: tests ADD rollback)
    CNIKIT_FAULT=<name>@<n>      only on the n-th time the point is reached in this process

The variable is read on every call (not at import) so that in-process tests can arm and disarm it.
"""
from __future__ import annotations

import os
import signal
from typing import Dict

ENV = "CNIKIT_FAULT"

_hits: Dict[str, int] = {}


class FaultInjected(RuntimeError):
    """Raised at an armed point in `:raise` mode."""


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, mode = spec.partition(":")
    target, _, nth = target.partition("@")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if nth and _hits[name] != int(nth):
        return
    if mode == "raise":
        raise FaultInjected(f"fault injected at {name}")
    os.kill(os.getpid(), signal.SIGKILL)
