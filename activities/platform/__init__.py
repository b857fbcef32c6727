"""The platform seam: where agent replicas run, chosen by ``settings.platform.kind``."""

from __future__ import annotations

from activities.platform.activities import PlatformActivities
from activities.platform.base import Platform, PlatformError
from activities.platform.local import LocalPlatform
from activities.secret_stores import SecretResolver, build_secret_store
from fleetops.settings import Settings

__all__ = ["LocalPlatform", "Platform", "PlatformActivities", "PlatformError", "build_platform"]


def build_platform(settings: Settings) -> Platform:
    """The platform ``settings.platform.kind`` names.

    Args:
        settings: FleetOps settings; ``local`` uses ``platform.local``, ``platform.gateway``
            and ``state_dir``, ``kubernetes`` uses ``platform.kubernetes`` (in-cluster config or
            a kubeconfig); both resolve agents' ``secrets`` from the store ``secrets.*`` names.

    Returns:
        A ready platform.

    Raises:
        PlatformError: the kind is not available, or its settings are unusable.
    """
    resolver = SecretResolver(build_secret_store(settings))
    if settings.platform.kind == "local":
        return LocalPlatform(
            settings.platform.local,
            settings.state_dir,
            gateway=settings.platform.gateway,
            secrets=resolver,
        )
    if settings.platform.kind == "kubernetes":
        from activities.platform.kubernetes import KubernetesPlatform

        return KubernetesPlatform.from_settings(settings.platform.kubernetes, secrets=resolver)
    raise PlatformError(
        f"unknown platform {settings.platform.kind!r}; set FLEETOPS_PLATFORM__KIND=local or "
        "kubernetes"
    )
