"""Run one sample-agent replica: ``fleetops-sample-agent`` or ``python -m infra.sample_agent``.

Configuration comes from the environment (see :class:`~infra.sample_agent.app.AgentConfig`).
uvicorn handles SIGTERM/SIGINT: it stops accepting connections, lets in-flight requests finish and
exits with code 0.
"""

from __future__ import annotations

import uvicorn
from pydantic import ValidationError

from infra.sample_agent.app import AgentConfig, create_app


def describe_config_error(exc: ValidationError) -> str:
    """Render a configuration error in terms of the environment variables to fix.

    Args:
        exc: The error raised by ``AgentConfig()``.

    Returns:
        A multi-line message, one ``NAME: problem (got value)`` line per bad variable.
    """
    lines = ["fleetops-sample-agent: invalid configuration, fix these environment variables:"]
    for error in exc.errors(include_url=False):
        name = "_".join(str(part) for part in error["loc"]).upper() or "(environment)"
        lines.append(f"  {name}: {error['msg']} (got {error.get('input')!r})")
    return "\n".join(lines)


def main() -> None:
    """Read ``AgentConfig`` from the environment and serve the agent until stopped.

    Raises:
        SystemExit: With code 1 and a message naming each bad environment variable when the
            configuration is invalid.
    """
    try:
        config = AgentConfig()
    except ValidationError as exc:
        raise SystemExit(describe_config_error(exc)) from None
    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
