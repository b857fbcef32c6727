"""The ``kubernetes`` platform: each colour of an agent is a Deployment, its entry points Services.

For agent ``A`` in ``settings.namespace``: Deployments ``A-blue`` and ``A-green`` (selector
``fleetops.io/agent=A,fleetops.io/color=<c>``), the active Service ``A`` and the preview Service
``A-preview``, whose selectors pick a colour. Deployments and Services are written with
server-side apply (PATCH ``application/apply-patch+yaml``, field manager ``fleetops``,
``force=True``), so every write is idempotent and a retried activity converges; only scaling a
colour to 0 is a JSON merge patch of ``spec.replicas`` (an apply of a partial manifest would
drop the fields it omits).

The official client blocks, so every call runs in a thread (``asyncio.to_thread``) with a
request timeout and library retries off: Temporal owns retries. Errors are mapped at the call
site: transport errors, 404 where an object must exist, 409, 429 and 5xx raise a retryable
``ApplicationError`` (type ``KubernetesUnavailable``, honouring ``Retry-After``); other 4xx raise
:class:`PlatformError`, which the activities turn into a non-retryable failure.

Sources: Kubernetes API conventions
(https://github.com/kubernetes/community/blob/master/contributors/devel/sig-architecture/api-conventions.md),
Server-Side Apply (https://kubernetes.io/docs/reference/using-api/server-side-apply/).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.platform._k8s_manifests import (
    AGENT_LABEL,
    COLOR_LABEL,
    COLORS,
    FIELD_MANAGER,
    GENERATION_ANNOTATION,
    check_agent_id,
    deployment_manifest,
    pod_replica,
    secret_data_key,
    secret_manifest,
    secret_name,
    service_manifest,
)
from activities.platform.base import LogTail, PlatformError
from activities.secret_stores import SecretResolver, no_secrets_error
from fleetops.errors import KUBERNETES_UNAVAILABLE, ROLLOUT_TIMEOUT
from fleetops.models import AgentSpec, Color, Replica, ServiceInfo
from fleetops.settings import KubernetesSettings

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
"""Pod template annotation a rollout restart sets (as ``kubectl rollout restart`` does)."""
RESTART_MANAGER = "fleetops-restart"
"""Field manager of the restart annotation, apart from ``fleetops`` so applies keep it."""
REQUEST_TIMEOUT = (5.0, 30.0)
"""Seconds to connect, and to read one API response."""


class KubernetesPlatform:
    """Runs agents as Deployments in one namespace, one Deployment per colour (blue-green).

    Args:
        api_client: a configured client (see :meth:`from_settings`).
        settings: namespace, container and service ports, rollout poll interval (seconds).
        rollout_timeout_seconds: how long ``ensure``/``restart`` wait for a complete rollout
            before raising a retryable ``RolloutTimeout``.
        secrets: resolves ``spec.secrets`` into the agent's Secret ``<agent>-secrets`` when a
            colour is applied or restarted; None: specs with secrets fail.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        settings: KubernetesSettings,
        *,
        rollout_timeout_seconds: float = 600.0,
        secrets: SecretResolver | None = None,
    ) -> None:
        self._secrets = secrets
        apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
        self._calls: dict[str, Callable[..., Any]] = {
            "read deployment": apps.read_namespaced_deployment,
            "patch deployment": apps.patch_namespaced_deployment,
            "delete deployment": apps.delete_namespaced_deployment,
            "read service": core.read_namespaced_service,
            "patch service": core.patch_namespaced_service,
            "delete service": core.delete_namespaced_service,
            "list pods": core.list_namespaced_pod,
            "read secret": core.read_namespaced_secret,
            "patch secret": core.patch_namespaced_secret,
            "delete secret": core.delete_namespaced_secret,
            "delete pod": core.delete_namespaced_pod,
            "read pod log": core.read_namespaced_pod_log,
        }
        self.api_client = api_client
        self._settings = settings
        self._ns = settings.namespace
        self._rollout_timeout = rollout_timeout_seconds

    @classmethod
    def from_settings(
        cls, settings: KubernetesSettings, *, secrets: SecretResolver | None = None
    ) -> KubernetesPlatform:
        """Connect as configured: an explicit ``kubeconfig``/``context`` wins; otherwise the
        pod's ServiceAccount when running in a pod, else the default kubeconfig.

        Raises:
            PlatformError: no usable configuration was found.
        """
        cfg = client.Configuration()
        explicit = settings.kubeconfig is not None or settings.context is not None
        try:
            if not explicit and os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=cfg)
            else:
                path = str(settings.kubeconfig) if settings.kubeconfig else None
                config.load_kube_config(path, settings.context, client_configuration=cfg)
        except (config.ConfigException, OSError) as e:
            raise PlatformError(
                f"no Kubernetes configuration ({e}); run in a pod with a ServiceAccount or set "
                "FLEETOPS_PLATFORM__KUBERNETES__KUBECONFIG (and __CONTEXT)"
            ) from e
        cfg.retries = False  # Temporal owns retries
        return cls(client.ApiClient(cfg), settings, secrets=secrets)

    # --- Platform protocol ---------------------------------------------------------------------

    async def ensure(self, spec: AgentSpec, replicas: int, color: Color = "blue") -> list[Replica]:
        """Apply the colour's Deployment with ``replicas`` pods and wait for the rollout.

        The first ``ensure`` of an agent also applies its Services with ``color`` active. With
        ``spec.secrets``, their current values are written to the Secret ``<agent>-secrets``
        first (keys ``<color>.<ENV>``), which the pods reference with ``secretKeyRef``.

        Returns:
            The colour's replicas, all ready, indexed by a stable sort of pod names.

        Raises:
            PlatformError: no ``image``, negative ``replicas``, names too long, a 4xx, or the
                Deployment exceeded its progress deadline.
            ApplicationError: retryable: API unavailable, or ``RolloutTimeout``; a secret
                that cannot be read (non-retryable ``SecretNotFound`` naming env, path, key).
        """
        if replicas < 0:
            raise PlatformError(f"replicas must be >= 0, got {replicas}")
        manifest = deployment_manifest(spec, replicas, color, self._settings)
        await self._apply_secret(spec, color)
        await self._patch("deployment", manifest["metadata"]["name"], manifest)
        if await self._read("service", spec.agent_id) is None:
            await self._apply_services(spec.agent_id, color, color, generation=0)
        return await self._wait_ready(spec.agent_id, color, replicas)

    async def restart(
        self, spec: AgentSpec, indices: list[int], color: Color = "blue"
    ) -> list[Replica]:
        """Delete the colour's pods at ``indices`` (the Deployment recreates them) and wait
        until the colour is ready again. ``spec.secrets`` are resolved again first, so the new
        pods get the secrets' current versions.

        Returns:
            The colour's replicas (new pods get new names, hence possibly new indices).

        Raises:
            PlatformError: a negative index, or the colour has no Deployment.
        """
        if any(i < 0 for i in indices):
            raise PlatformError(f"replica indices must be >= 0, got {indices}")
        agent = check_agent_id(spec.agent_id)
        await self._apply_secret(spec, color)  # new pods read the current secret versions
        pods = await self._pods(agent, color)
        doomed = {pods[i].metadata.name for i in set(indices) if i < len(pods)}
        for name in sorted(doomed):
            await self._delete("pod", name)
        dep = await self._read("deployment", f"{agent}-{color}")
        if dep is None:
            raise PlatformError(f"agent {agent!r} has no {color} Deployment; run ensure first")
        return await self._wait_ready(agent, color, dep.spec.replicas or 0, gone=doomed)

    async def rolling_restart(
        self,
        spec: AgentSpec,
        color: Color,
        *,
        rollout_id: str,
        requested_at: datetime,
        ready_timeout: float,
    ) -> list[Replica]:
        """``kubectl rollout restart`` of the colour's Deployment, with ``spec`` applied first.

        Applies the Deployment of ``spec`` (so a changed config reaches the pod template),
        then sets the pod template annotation ``kubectl.kubernetes.io/restartedAt`` to
        ``requested_at`` (a JSON merge patch under field manager ``fleetops-restart``, so later
        applies by ``fleetops`` keep it), and waits for the rollout: the Deployment's strategy
        (``maxSurge: 1, maxUnavailable: 0``) replaces pods one by one, each new pod ready before
        an old one goes. A retry sets the same value: no second rollout.

        Args:
            spec: what the new pods run.
            color: the colour's Deployment.
            rollout_id: unused here (the annotation value identifies the restart).
            requested_at: the annotation's value (RFC 3339).
            ready_timeout: unused here (the rollout waits ``rollout_timeout_seconds``).

        Returns:
            The colour's replicas once the rollout is complete.

        Raises:
            PlatformError: the colour has no Deployment, a 4xx, or the rollout exceeded its
                progress deadline.
            ApplicationError: retryable: API unavailable, or ``RolloutTimeout``.
        """
        del rollout_id, ready_timeout
        agent = check_agent_id(spec.agent_id)
        name = f"{agent}-{color}"
        dep = await self._read("deployment", name)
        if dep is None:
            raise PlatformError(f"agent {agent!r} has no {color} Deployment; run ensure first")
        replicas = dep.spec.replicas or 0
        await self._patch(
            "deployment", name, deployment_manifest(spec, replicas, color, self._settings)
        )
        stamp = requested_at.isoformat()
        patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
        await self._api(
            "patch deployment",
            name,
            patch,
            field_manager=RESTART_MANAGER,
            _content_type=MERGE_PATCH,
        )
        return await self._wait_ready(agent, color, replicas)

    async def scale_down(self, agent_id: str, color: Color) -> int:
        """Scale the colour's Deployment to 0, keeping it (and the Services) for a fast rollback.

        Returns:
            How many of its pods were ready when asked (0 if it does not exist).
        """
        name = f"{check_agent_id(agent_id)}-{color}"
        dep = await self._patch("deployment", name, {"spec": {"replicas": 0}}, merge=True)
        return (dep.status.ready_replicas or 0) if dep is not None and dep.status else 0

    async def stop_all(self, agent_id: str) -> int:
        """Delete both Deployments (their pods are garbage-collected), both Services and the
        agent's Secret.

        Returns:
            How many pods were running.
        """
        agent = check_agent_id(agent_id)
        running = sum(r.running for r in await self.list_replicas(agent))
        for color in COLORS:
            await self._delete("deployment", f"{agent}-{color}", propagation_policy="Background")
        for name in (agent, f"{agent}-preview"):
            await self._delete("service", name)
        await self._delete("secret", secret_name(agent))
        return running

    async def list_replicas(self, agent_id: str, color: Color | None = None) -> list[Replica]:
        """The agent's pods (of ``color``, or blue then green), indexed by sorted pod name."""
        agent, port = check_agent_id(agent_id), self._settings.container_port
        return [
            pod_replica(pod, i, c, port)
            for c in ([color] if color else COLORS)
            for i, pod in enumerate(await self._pods(agent, c))
        ]

    async def switch_traffic(
        self, agent_id: str, active_color: Color, preview_color: Color | None = None
    ) -> ServiceInfo:
        """Select ``active_color`` in Service ``<agent>`` and ``preview_color`` (the active colour
        when None) in ``<agent>-preview``, bumping ``fleetops.io/generation``; a no-op when they
        already do. kube-proxy then routes new connections; open ones stay on their pod.

        Raises:
            PlatformError: the agent has no Service (never provisioned).
        """
        current = await self.describe_service(agent_id)
        if current is None:
            raise PlatformError(f"agent {agent_id!r} has no Service; run ensure first")
        target = self._info(agent_id, active_color, preview_color, current.generation)
        if current.model_copy(update={"generation": target.generation}) == target:
            return current
        generation = current.generation + 1
        await self._apply_services(agent_id, active_color, preview_color, generation)
        return target.model_copy(update={"generation": generation})

    # --- incident response (IncidentOps) --------------------------------------------------------

    async def replica_logs(self, agent_id: str, *, lines: int, max_bytes: int) -> list[LogTail]:
        """The last ``lines`` lines (at most ``max_bytes`` bytes) of each pod of both colours
        (``read_namespaced_pod_log`` with ``tail_lines`` and ``limit_bytes``). A pod whose log
        cannot be read (its container not started yet) is a tail saying why.

        Raises:
            PlatformError: an invalid agent id, or the pods cannot be listed (a 4xx).
        """
        agent = check_agent_id(agent_id)
        out = []
        for color in COLORS:
            for pod in await self._pods(agent, color):
                name = pod.metadata.name
                try:
                    text = await self._api(
                        "read pod log", name, tail_lines=lines, limit_bytes=max_bytes
                    )
                except (PlatformError, ApplicationError) as e:
                    out.append(
                        LogTail(f"{color}/{name}", f"pod/{name}", f"(unreadable: {e})", False)
                    )
                    continue
                text = text or ""
                cut = text.count("\n") >= lines or len(text.encode()) >= max_bytes
                out.append(LogTail(f"{color}/{name}", f"pod/{name}", text.rstrip("\n"), cut))
        return out

    async def set_rate_limit(
        self, agent_id: str, rps: float | None, *, burst: int | None = None, set_by: str = ""
    ) -> float | None:
        """Not supported: limit an agent's traffic at its Ingress or service mesh instead.

        Raises:
            PlatformError: always.
        """
        raise PlatformError(
            "rate limiting is not supported on kubernetes; limit at the Ingress or mesh"
        )

    async def describe_service(self, agent_id: str) -> ServiceInfo | None:
        """The agent's Services as :class:`ServiceInfo`, or None before the first ``ensure``."""
        agent = check_agent_id(agent_id)
        active = await self._read("service", agent)
        if active is None or not active.spec.selector:
            return None
        preview = await self._read("service", f"{agent}-preview")
        preview_color = ((preview.spec.selector or {}) if preview else {}).get(COLOR_LABEL)
        annotations = active.metadata.annotations or {}
        generation = int(annotations.get(GENERATION_ANNOTATION, "0"))
        return self._info(agent, active.spec.selector[COLOR_LABEL], preview_color, generation)

    # --- helpers ------------------------------------------------------------------------------

    def _info(
        self, agent: str, active: Color, preview: Color | None, generation: int
    ) -> ServiceInfo:
        url = f"http://{{}}.{self._ns}.svc:{self._settings.service_port}"
        has_preview = preview is not None and preview != active
        return ServiceInfo(
            agent_id=agent,
            active_color=active,
            preview_color=preview if has_preview else None,
            active_url=url.format(agent),
            preview_url=url.format(f"{agent}-preview") if has_preview else None,
            generation=generation,
        )

    async def _apply_services(
        self, agent: str, active: Color, preview: Color | None, generation: int
    ) -> None:
        # Preview first: once the active Service exists, both do (ensure relies on it).
        for name, color in ((f"{agent}-preview", preview or active), (agent, active)):
            await self._patch(
                "service", name, service_manifest(agent, name, color, generation, self._settings)
            )

    async def _apply_secret(self, spec: AgentSpec, color: Color) -> None:
        """Write the current values of ``spec.secrets`` as ``<color>.<ENV>`` keys of the agent's
        Secret, keeping the other colour's keys (a read, then one server-side apply)."""
        if not spec.secrets:
            return
        if self._secrets is None:
            raise no_secrets_error(spec.agent_id)
        values = await self._secrets.resolve(spec.secrets)
        agent, prefix = check_agent_id(spec.agent_id), f"{color}."
        current = await self._read("secret", secret_name(agent))
        kept = {
            k: base64.b64decode(v).decode()
            for k, v in ((current.data or {}) if current is not None else {}).items()
            if not k.startswith(prefix)
        }
        data = kept | {secret_data_key(color, env): v for env, v in values.items()}
        manifest = secret_manifest(agent, data, self._settings)
        await self._patch("secret", secret_name(agent), manifest)

    async def _read(self, kind: str, name: str) -> Any:
        """The object, or None if it does not exist."""
        return await self._api(f"read {kind}", name, missing_ok=True)

    async def _patch(self, kind: str, name: str, body: dict[str, Any], merge: bool = False) -> Any:
        """Server-side apply ``body`` (or merge-patch it: None if the object is missing)."""
        how: dict[str, Any] = {"_content_type": MERGE_PATCH if merge else APPLY_PATCH}
        how |= {"missing_ok": True} if merge else {"force": True}
        return await self._api(f"patch {kind}", name, body, field_manager=FIELD_MANAGER, **how)

    async def _delete(self, kind: str, name: str, **options: Any) -> None:
        """Delete the object; already gone is fine."""
        await self._api(f"delete {kind}", name, missing_ok=True, **options)

    async def _pods(self, agent: str, color: Color) -> list[Any]:
        """The colour's ``V1Pod``s that are not terminating, sorted by name."""
        selector = f"{AGENT_LABEL}={agent},{COLOR_LABEL}={color}"
        found = await self._api("list pods", label_selector=selector)
        pods = [p for p in found.items if not p.metadata.deletion_timestamp]
        return sorted(pods, key=lambda p: p.metadata.name)

    async def _wait_ready(
        self, agent: str, color: Color, replicas: int, gone: set[str] | None = None
    ) -> list[Replica]:
        """Poll every ``rollout_poll_seconds`` until the rollout is complete (as ``kubectl
        rollout status`` decides: observedGeneration current, replicas == updated == ready) and
        exactly ``replicas`` pods, none in ``gone``, are ready; heartbeat meanwhile.

        Raises:
            PlatformError: the Deployment reports ``ProgressDeadlineExceeded``.
            ApplicationError: retryable ``RolloutTimeout`` after ``rollout_timeout_seconds``,
                or ``KubernetesUnavailable`` if the Deployment vanished.
        """
        name, port = f"{agent}-{color}", self._settings.container_port
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._rollout_timeout
        while True:
            dep = await self._api("read deployment", name)
            st = dep.status or client.V1DeploymentStatus()
            for cond in st.conditions or []:
                if cond.type == "Progressing" and cond.reason == "ProgressDeadlineExceeded":
                    raise PlatformError(f"deployment {name} failed to progress: {cond.message}")
            pods = await self._pods(agent, color)
            found = [pod_replica(p, i, color, port) for i, p in enumerate(pods)]
            counts = (st.replicas, st.updated_replicas, st.ready_replicas)
            if (
                (st.observed_generation or 0) >= (dep.metadata.generation or 0)
                and all((n or 0) == replicas for n in counts)
                and len(found) == replicas
                and all(r.running for r in found)
                and not (gone or set()) & {p.metadata.name for p in pods}
            ):
                return found
            progress = f"{st.ready_replicas or 0}/{replicas} ready, {len(found)} pods"
            if loop.time() >= deadline:
                raise ApplicationError(
                    f"deployment {self._ns}/{name} not rolled out after "
                    f"{self._rollout_timeout:.0f} s ({progress}); check its pods' events",
                    type=ROLLOUT_TIMEOUT,
                )
            if activity.in_activity():
                activity.heartbeat(progress)
            await asyncio.sleep(self._settings.rollout_poll_seconds)

    async def _api(self, call: str, *args: Any, missing_ok: bool = False, **kw: Any) -> Any:
        """Run the blocking client call ``call`` ("<verb> <kind>") in a thread, in our namespace
        (after the object name, if any); map errors as the module doc says.

        Returns:
            The client's answer; None for a 404 when ``missing_ok``.
        """
        what = f"{call} {args[0]}" if args else f"{call} in {self._ns}"
        fn = self._calls[call]
        try:
            return await asyncio.to_thread(
                fn, *args[:1], self._ns, *args[1:], _request_timeout=REQUEST_TIMEOUT, **kw
            )
        except ApiException as e:
            if missing_ok and e.status == 404:
                return None
            raise _api_error(what, e) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ApplicationError(
                f"{what}: Kubernetes API unreachable: {e}", type=KUBERNETES_UNAVAILABLE
            ) from e


def _api_error(what: str, e: ApiException) -> Exception:
    """Retryable ``ApplicationError`` for 0 (transport), 404, 409, 429, 5xx; else PlatformError."""
    code = e.status or 0
    try:
        detail = str(json.loads(e.body or "")["message"])
    except (ValueError, KeyError, TypeError):
        detail = str(e.body or e.reason or "")
    message = f"{what}: HTTP {code}: {detail[:300]}"
    if code in (0, 404, 409, 429) or code >= 500:
        retry_after = str((e.headers or {}).get("Retry-After", ""))
        delay = timedelta(seconds=int(retry_after)) if retry_after.isdigit() else None
        return ApplicationError(message, type=KUBERNETES_UNAVAILABLE, next_retry_delay=delay)
    hint = {
        401: "; check the worker's Kubernetes credentials",
        403: "; grant the worker's ServiceAccount the Role in infra/k8s/worker-rbac.yaml",
        422: "; the agent spec produced an invalid object",
    }
    return PlatformError(message + hint.get(code, ""))
