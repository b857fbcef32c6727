"""The local platform: replicas as processes on loopback ports, and the gateway that serves them.

Modules:

- :mod:`~activities.platform.local.platform`: :class:`LocalPlatform`, the platform seam's local
  implementation (what activities call).
- :mod:`~activities.platform.local.replicas`, :mod:`~activities.platform.local.process`: replica
  processes (start, stop, ports, pid-reuse-safe liveness).
- :mod:`~activities.platform.local.state`: the state files under ``<state_dir>/agents``.
- :mod:`~activities.platform.local.service`, :mod:`~activities.platform.local.targets`: each
  agent's service (gateway ports) and Prometheus targets.
- :mod:`~activities.platform.local.admin`: the gateway's admin contract (pydantic), used by
  :mod:`~activities.platform.local.gateway_client` (platform side) and
  :mod:`~activities.platform.local.gateway` (the gateway: a reverse proxy, with
  :mod:`~activities.platform.local.proxy`, :mod:`~activities.platform.local.balancer`,
  :mod:`~activities.platform.local.readiness`, :mod:`~activities.platform.local.listeners`).
"""

from __future__ import annotations

from activities.platform.local.platform import LocalPlatform

__all__ = ["LocalPlatform"]
