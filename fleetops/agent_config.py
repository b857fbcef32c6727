"""Bounds and checks of an agent's versioned configuration (``AgentSpec.config``).

A configuration is a flat JSON object of scalars, delivered to every replica as the environment
variable :data:`CONFIG_ENV` holding that object as JSON. It is validated against the agent's
optional ``config_schema`` (JSON Schema, Draft 2020-12, via the ``jsonschema`` library).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

import jsonschema
from jsonschema.validators import validator_for
from pydantic import Field, StrictBool, StrictStr

CONFIG_ENV = "FLEETOPS_AGENT_CONFIG"
"""Environment variable that carries the configuration (a JSON object) into each replica."""

CONFIG_VERSION_ENV = "FLEETOPS_AGENT_CONFIG_VERSION"
"""Environment variable that carries the configuration's version number into each replica."""

MAX_CONFIG_KEYS = 64
"""Keys of one configuration."""

MAX_CONFIG_BYTES = 16 * 1024
"""Size of one configuration, and of one schema, serialised as JSON: 16 KiB."""

MAX_CONFIG_STRING = 4096
"""Length of one string value of a configuration."""

MAX_CONFIG_VERSIONS_KEPT = 10
"""Configuration versions an agent keeps in its state (carried across continue-as-new)."""

CONFIG_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$"
"""Keys: a letter or '_', then letters, digits, '_', '.', '-' (at most 128 characters)."""

ConfigValue = (
    Annotated[StrictStr, Field(max_length=MAX_CONFIG_STRING)]
    | StrictBool
    | Annotated[int, Field(strict=True)]
    | Annotated[float, Field(strict=True, allow_inf_nan=False)]
    | None
)
"""A JSON scalar: string (<= 4096 characters), boolean, integer, finite number, or null."""

_KEY = re.compile(CONFIG_KEY_PATTERN)


def check_config_bounds(config: dict[str, Any], schema: dict[str, Any] | None) -> None:
    """Check the keys and sizes of a configuration and its schema (not the schema's rules).

    Args:
        config: The configuration (already typed as JSON scalars).
        schema: The JSON Schema, if any.

    Raises:
        ValueError: A key does not match :data:`CONFIG_KEY_PATTERN`, or the configuration or the
            schema is over :data:`MAX_CONFIG_BYTES` as JSON.
    """
    for key in config:
        if not _KEY.match(key):
            raise ValueError(f"config key {key!r} must match {CONFIG_KEY_PATTERN}")
    if len(json.dumps(config)) > MAX_CONFIG_BYTES:
        raise ValueError(f"config is over {MAX_CONFIG_BYTES} bytes as JSON")
    if schema is not None and len(json.dumps(schema, default=str)) > MAX_CONFIG_BYTES:
        raise ValueError(f"config_schema is over {MAX_CONFIG_BYTES} bytes as JSON")


def _validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A validator of ``schema``'s dialect (``$schema``; Draft 2020-12 when absent).

    Raises:
        ValueError: the schema is not a valid JSON Schema.
    """
    cls = validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as err:
        raise ValueError(f"config_schema is not a valid JSON Schema: {err.message}") from None
    return cls(schema)


def check_schema(schema: dict[str, Any]) -> None:
    """Check that ``schema`` is a valid JSON Schema (its own metaschema).

    Raises:
        ValueError: it is not, with the metaschema's message.
    """
    _validator(schema)


def config_error(config: dict[str, Any], schema: dict[str, Any] | None) -> str | None:
    """Why ``config`` does not satisfy ``schema``, or None when it does (or there is no schema).

    Deterministic and without I/O (a remote ``$ref`` is not fetched: it is an error), so the
    workflow's update validator calls it.

    Returns:
        A message naming the failing path and rule, e.g. ``config.replicas_hint: 'x' is not of
        type 'integer'``; None when valid.
    """
    if schema is None:
        return None
    try:
        errors = sorted(_validator(schema).iter_errors(config), key=lambda e: list(e.path))
    except ValueError as err:
        return str(err)
    except Exception as err:  # an unresolvable $ref, ...
        return f"config_schema cannot be applied: {type(err).__name__}: {str(err)[:200]}"
    if not errors:
        return None
    first = errors[0]
    where = ".".join(["config", *(str(p) for p in first.path)])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.message[:300]}{more}"


def config_env(config: dict[str, Any]) -> dict[str, str]:
    """The environment that delivers ``config`` to a replica: ``{FLEETOPS_AGENT_CONFIG: <JSON>}``
    (compact, keys sorted); empty for an empty configuration, so agents without one run with the
    environment they had before configurations existed."""
    if not config:
        return {}
    return {CONFIG_ENV: json.dumps(config, sort_keys=True, separators=(",", ":"))}
