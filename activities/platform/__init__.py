"""The platform seam: where agent replicas run, chosen by ``settings.platform.kind``."""

from __future__ import annotations

from activities.platform.activities import PlatformActivities
from activities.platform.base import Platform, PlatformError
from activities.platform.local import LocalPlatform
from fleetops.settings import Settings

__all__ = ["LocalPlatform", "Platform", "PlatformActivities", "PlatformError", "build_platform"]


def build_platform(settings: Settings) -> Platform:
    """The platform ``settings.platform.kind`` names.

    Args:
        settings: FleetOps settings; ``local`` uses ``platform.local`` and ``state_dir``.

    Returns:
        A ready platform.

    Raises:
        PlatformError: the kind is not available, or its settings are unusable.
    """
    if settings.platform.kind == "local":
        return LocalPlatform(settings.platform.local, settings.state_dir)
    raise PlatformError(
        f"{settings.platform.kind} platform not available yet; set FLEETOPS_PLATFORM__KIND=local"
    )
