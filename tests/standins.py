"""In-memory stand-ins for FleetOps activities, registered under the real activity names.

``ColorPlatform`` keeps replicas per (agent, colour) and one service per agent, and records every
call in order, so tests can assert what a workflow did to the world and in which order (the saga's
compensations, for instance). Knobs make a step fail or hang on purpose, and make probes of
chosen replicas fail (``probe_script``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from fleetops.analysis import Measurement, MeasureRequest
from fleetops.checks import SmokeRequest, SmokeResult, WaitHealthyRequest
from fleetops.models import (
    DeprovisionRequest,
    ProbeRequest,
    ProbeResult,
    ProvisionRequest,
    Replica,
    RestartRequest,
    RollingRestartRequest,
    ScaleDownRequest,
    ServiceInfo,
    SwitchTrafficRequest,
)


class ColorPlatform:
    """Replicas per (agent, colour), a service per agent, scripted failures and hangs."""

    def __init__(self) -> None:
        self.replicas: dict[tuple[str, str], list[Replica]] = {}
        self.services: dict[str, ServiceInfo] = {}
        self.calls: list[tuple[str, Any]] = []
        self.fail: set[str] = set()  # activity names that fail (non-retryable)
        self.fail_times: dict[str, int] = {}  # activity name -> how many next calls fail
        self.hang: set[str] = set()  # activity names that block until released
        self.release = asyncio.Event()
        self.smoke_status = 200
        self.metric_values: dict[str, list[float | None]] = {}  # metric name -> scripted values
        # endpoint -> outcomes of its next probes, consumed one per probe (then healthy again)
        self.probe_script: dict[str, list[bool]] = {}
        self.rollouts = 0
        self.configs: dict[tuple[str, str], dict[str, Any]] = {}  # config each colour runs

    async def _step(self, name: str, detail: Any) -> None:
        self.calls.append((name, detail))
        if name in self.hang:
            while not self.release.is_set():
                activity.heartbeat()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), timeout=0.2)
        if self.fail_times.get(name, 0) > 0:
            self.fail_times[name] -= 1
            raise ApplicationError(f"{name} failed on purpose", type="Injected", non_retryable=True)
        if name in self.fail:
            raise ApplicationError(f"{name} failed on purpose", type="Injected", non_retryable=True)

    @staticmethod
    def endpoint(agent: str, color: str, index: int) -> str:
        """The endpoint ``provision_replicas`` gives replica ``index`` of ``color``."""
        return f"http://{agent}-{color}-{index}.invalid"

    def running(self, agent: str, color: str) -> int:
        return len(self.replicas.get((agent, color), []))

    @activity.defn(name="provision_replicas")
    async def provision(self, req: ProvisionRequest) -> list[Replica]:
        await self._step("provision_replicas", (req.color, req.replicas, req.spec.version))
        agent = req.spec.agent_id
        self.replicas[(agent, req.color)] = [
            Replica(
                index=i,
                endpoint=self.endpoint(agent, req.color, i),
                color=req.color,
                version=req.spec.version,
            )
            for i in range(req.replicas)
        ]
        self.services.setdefault(
            agent,
            ServiceInfo(agent_id=agent, active_color=req.color, active_url=f"http://{agent}.svc"),
        )
        return self.replicas[(agent, req.color)]

    @activity.defn(name="restart_replicas")
    async def restart(self, req: RestartRequest) -> list[Replica]:
        await self._step("restart_replicas", (req.color, req.indices))
        return self.replicas[(req.spec.agent_id, req.color)]

    @activity.defn(name="rolling_restart")
    async def rolling_restart(self, req: RollingRestartRequest) -> list[Replica]:
        """Replace every replica of the colour: new endpoints ``...-r<n>`` per restart."""
        await self._step("rolling_restart", (req.color, req.spec.version, req.spec.config))
        key = (req.spec.agent_id, req.color)
        self.rollouts += 1
        self.replicas[key] = [
            r.model_copy(update={"endpoint": f"{self.endpoint(*key, r.index)}-r{self.rollouts}"})
            for r in self.replicas.get(key, [])
        ]
        self.configs[key] = dict(req.spec.config)
        return self.replicas[key]

    @activity.defn(name="deprovision_agent")
    async def deprovision(self, req: DeprovisionRequest) -> int:
        await self._step("deprovision_agent", req.agent_id)
        n = sum(len(v) for k, v in self.replicas.items() if k[0] == req.agent_id)
        self.replicas = {k: v for k, v in self.replicas.items() if k[0] != req.agent_id}
        self.services.pop(req.agent_id, None)
        return n

    @activity.defn(name="scale_down_color")
    async def scale_down(self, req: ScaleDownRequest) -> int:
        await self._step("scale_down_color", req.color)
        return len(self.replicas.pop((req.agent_id, req.color), []))

    @activity.defn(name="switch_traffic")
    async def switch(self, req: SwitchTrafficRequest) -> ServiceInfo:
        await self._step("switch_traffic", (req.active_color, req.preview_color))
        old = self.services[req.agent_id]
        self.services[req.agent_id] = old.model_copy(
            update={
                "active_color": req.active_color,
                "preview_color": req.preview_color,
                "preview_url": f"http://{req.agent_id}-preview.svc" if req.preview_color else None,
                "generation": old.generation + 1,
            }
        )
        return self.services[req.agent_id]

    @activity.defn(name="describe_service")
    async def describe_service(self, agent_id: str) -> ServiceInfo | None:
        return self.services.get(agent_id)

    @activity.defn(name="list_replicas")
    async def list_replicas(self, agent_id: str) -> list[Replica]:
        return [r for (a, _), rs in sorted(self.replicas.items()) if a == agent_id for r in rs]

    @activity.defn(name="probe_replicas")
    async def probe(self, req: ProbeRequest) -> list[ProbeResult]:
        results = []
        for e in req.endpoints:
            script = self.probe_script.get(e)
            healthy = script.pop(0) if script else True
            results.append(
                ProbeResult(endpoint=e, healthy=healthy, error=None if healthy else "scripted")
            )
        return results

    @activity.defn(name="wait_healthy")
    async def wait_healthy(self, req: WaitHealthyRequest) -> list[ProbeResult]:
        await self._step("wait_healthy", len(req.endpoints))
        return [ProbeResult(endpoint=e, healthy=True) for e in req.endpoints]

    @activity.defn(name="run_smoke_tests")
    async def smoke(self, req: SmokeRequest) -> list[SmokeResult]:
        await self._step("run_smoke_tests", len(req.tests))
        return [
            SmokeResult(
                test=t.name,
                endpoint=e,
                passed=self.smoke_status == t.expect_status,
                status_code=self.smoke_status,
                error=None if self.smoke_status == t.expect_status else "bad status",
            )
            for t in req.tests
            for e in req.endpoints
        ]

    @activity.defn(name="measure_metric")
    async def measure(self, req: MeasureRequest) -> Measurement:
        await self._step("measure_metric", req.metric.name)
        values = self.metric_values.get(req.metric.name) or [0.0]
        value = values.pop(0) if len(values) > 1 else values[0]
        if value is None:
            return Measurement(value=None, error="no data", phase="Error")
        return Measurement(value=value, error=None, phase="Successful")

    def activities(self) -> list[Any]:
        return [
            self.provision,
            self.restart,
            self.deprovision,
            self.scale_down,
            self.switch,
            self.describe_service,
            self.list_replicas,
            self.probe,
            self.wait_healthy,
            self.smoke,
            self.measure,
            self.rolling_restart,
        ]
