"""``fleetops secrets put | get | versions | rollback`` on the configured secret store.

The store is whichever ``FLEETOPS_SECRETS__BACKEND`` names (``local``: the encrypted file under
the state directory; ``vault``: KV v2). Values are read from stdin, never from the command line
(argv is visible to every user in ``ps`` and kept in shell history), and printed only with
``get --show``. Exit codes as in :mod:`starters.cli_common`: 0 done, 1 the store said no
(not found, conflict, forbidden, unreachable), 2 bad input.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, TypeVar

import typer
from rich.table import Table

from activities.secret_stores import build_secret_store, ops
from activities.secret_stores.base import (
    SecretInvalidInput,
    SecretNotFound,
    SecretStore,
    SecretStoreError,
    check_key,
    check_path,
)
from fleetops.secrets import SecretRestore
from starters.cli_common import fail, load_settings, out

T = TypeVar("T")
MASK = "********"
"""What ``get`` prints instead of a value (always the same length: no hint of the real one)."""
MAX_VALUE_BYTES = 64 * 1024
"""Largest value ``put`` accepts from stdin."""

secrets_app = typer.Typer(
    help="Put, show, list versions of and roll back secrets in the configured store "
    "(FLEETOPS_SECRETS__BACKEND=local|vault).",
    no_args_is_help=True,
)
Path_ = Annotated[str, typer.Argument(help="Secret path, e.g. agents/demo.")]


def register(app: typer.Typer) -> None:
    """Add the ``secrets`` command group to the root ``fleetops`` app."""
    app.add_typer(secrets_app, name="secrets")


def _store() -> SecretStore:
    return build_secret_store(load_settings())


def _do(fn: Callable[[], T]) -> T:
    """Run a store call; bad input exits 2, any other store error 1 (message names the path)."""
    try:
        return fn()
    except SecretInvalidInput as err:
        fail(str(err), 2)
    except SecretStoreError as err:
        fail(f"{err.type}: {err}", 1)


def _read_value() -> str:
    """The value on stdin (one trailing newline dropped); a hidden prompt on a terminal."""
    if sys.stdin.isatty():
        return str(typer.prompt("value", hide_input=True, confirmation_prompt=True))
    raw = sys.stdin.buffer.read(MAX_VALUE_BYTES + 1)
    if len(raw) > MAX_VALUE_BYTES:
        fail(f"the value on stdin is longer than {MAX_VALUE_BYTES} bytes", 2)
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        fail("the value on stdin is not UTF-8 text", 2)
    return text[:-1] if text.endswith("\n") else text


@secrets_app.command("put")
def put(
    path: Path_,
    key: Annotated[str, typer.Argument(help="Key inside the secret, e.g. openai.")],
) -> None:
    """Set KEY of PATH to the value read from stdin (e.g. `printf %s "$V" | fleetops secrets put
    agents/demo openai`), as a new version; the other keys are kept. Check-and-set: a concurrent
    writer makes it fail (exit 1) instead of being overwritten."""
    _do(lambda: (check_path(path), check_key(key)))
    value = _read_value()
    if not value:
        fail('empty value on stdin; pipe the value in, e.g. printf %s "$VALUE" | ...', 2)
    store = _store()

    def write() -> int:
        try:
            current = store.read(path)
            data, cas = dict(current.data), current.version
        except SecretNotFound:
            try:
                cas = store.metadata(path).current_version
            except SecretNotFound:
                cas = 0
            data = {}
        return store.write(path, data | {key: value}, cas=cas)

    version = _do(write)
    out.print(f"{path}: version {version} ({key} set) in the {store.name} store", markup=False)


@secrets_app.command("get")
def get(
    path: Path_,
    key: Annotated[str | None, typer.Argument(help="Only this key.")] = None,
    show: Annotated[bool, typer.Option("--show", help="Print values (else masked).")] = False,
    version: Annotated[int | None, typer.Option(help="This version (default: current).")] = None,
) -> None:
    """Show the keys of PATH with values masked; --show prints them. With KEY and --show, only
    the value is printed (for scripts)."""
    found = _do(lambda: _store().read(check_path(path), version))
    if key is not None:
        if key not in found.data:
            fail(f"{path} (version {found.version}) has no key {key!r}", 1)
        if show:
            sys.stdout.write(found.data[key] + "\n")
        else:
            out.print(f"{key}: {MASK}", markup=False)
        return
    table = Table(title=f"{path} version {found.version}")
    table.add_column("key")
    table.add_column("value")
    for name in sorted(found.data):
        table.add_row(name, found.data[name] if show else MASK)
    out.print(table)


@secrets_app.command("versions")
def versions(path: Path_) -> None:
    """List the versions of PATH: created, deleted/destroyed, pinned (kept until a rotation is
    confirmed); no values."""
    listed = _do(lambda: ops.versions(_store(), path))
    table = Table(title=f"{path} (current: {listed.current_version})")
    for column in ("version", "created", "state", "pinned"):
        table.add_column(column)
    for v in listed.versions:
        state = "destroyed" if v.destroyed else "deleted" if v.deleted else "ok"
        current = " (current)" if v.version == listed.current_version else ""
        table.add_row(f"{v.version}{current}", v.created_time, state, "yes" if v.pinned else "")
    out.print(table)


@secrets_app.command("rollback")
def rollback(
    path: Path_,
    version: Annotated[int, typer.Argument(help="Version whose data becomes current.", min=1)],
) -> None:
    """Make VERSION's data current again, as a new version (check-and-set against the current
    version; nothing is written when it already is current)."""
    store = _store()

    def restore() -> tuple[int, int | None]:
        current = store.metadata(check_path(path)).current_version
        req = SecretRestore(path=path, version=version, expected_version=current)
        ref = ops.restore(store, req)
        return ref.version, ref.previous_version

    new, previous = _do(restore)
    if previous is None:
        out.print(f"{path}: version {version}'s data is already current ({new})", markup=False)
    else:
        out.print(f"{path}: version {version} restored as version {new}", markup=False)
