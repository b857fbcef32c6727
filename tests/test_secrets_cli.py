"""``fleetops secrets ...`` as an operator runs it (the real executable, a subprocess): values
from stdin only, masked unless --show, versions and rollback, on the local store and on Vault."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from activities.secret_stores.local import LocalStore
from tests.fakes.vault import FakeVault

BIN = Path(sys.executable).parent
VALUE = "sk-cli-secret-value-42"
Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def vault() -> Iterator[FakeVault]:
    with FakeVault() as fake:
        yield fake


@pytest.fixture(params=["local", "vault"])
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    env = {**os.environ, "FLEETOPS_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "200"}
    env["FLEETOPS_SECRETS__BACKEND"] = request.param
    if request.param == "vault":
        fake: FakeVault = request.getfixturevalue("vault")
        env |= {"FLEETOPS_SECRETS__VAULT__ADDRESS": fake.url}
        env |= {"FLEETOPS_SECRETS__VAULT__TOKEN": "root"}
    prefix = f"cli-{request.param}-{tmp_path.name[-12:]}"

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        argv = [a.replace("@", prefix) for a in args]
        return subprocess.run(
            [str(BIN / "fleetops"), "secrets", *argv],
            input=stdin,
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


def test_put_get_versions_rollback(cli: Cli) -> None:
    put = cli("put", "@/demo", "openai", stdin=VALUE + "\n")
    assert put.returncode == 0, put.stderr
    assert "version 1" in put.stdout and VALUE not in put.stdout + put.stderr
    assert cli("put", "@/demo", "other", stdin="x").returncode == 0

    masked = cli("get", "@/demo")
    assert masked.returncode == 0 and VALUE not in masked.stdout
    assert "openai" in masked.stdout and "********" in masked.stdout
    assert VALUE not in cli("get", "@/demo", "openai").stdout
    shown = cli("get", "@/demo", "openai", "--show")
    assert shown.returncode == 0 and shown.stdout == VALUE + "\n"  # the trailing newline dropped

    assert cli("put", "@/demo", "openai", stdin="second").returncode == 0
    listed = cli("versions", "@/demo")
    assert listed.returncode == 0 and "3 (current)" in listed.stdout
    assert "second" not in listed.stdout

    back = cli("rollback", "@/demo", "2")
    assert back.returncode == 0 and "restored as version 4" in back.stdout
    assert cli("get", "@/demo", "openai", "--show").stdout == VALUE + "\n"
    assert "already current" in cli("rollback", "@/demo", "2").stdout


def test_bad_input_and_missing_secrets(cli: Cli) -> None:
    assert cli("put", "@/demo", "k", VALUE).returncode == 2  # no value on the command line
    empty = cli("put", "@/demo", "k", stdin="")
    assert empty.returncode == 2 and "stdin" in empty.stderr
    assert cli("put", "../etc", "k", stdin="v").returncode == 2
    missing = cli("get", "@/nothing")
    assert missing.returncode == 1 and "SecretNotFound" in missing.stderr
    assert cli("rollback", "@/nothing", "1").returncode == 1


def test_the_local_store_file_holds_no_value(tmp_path: Path) -> None:
    env = {**os.environ, "FLEETOPS_STATE_DIR": str(tmp_path), "FLEETOPS_SECRETS__BACKEND": "local"}
    run = subprocess.run(
        [str(BIN / "fleetops"), "secrets", "put", "agents/x", "api"],
        input=VALUE,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "generated a key" in run.stderr  # the operator is told where the key is
    store = LocalStore(tmp_path)
    assert VALUE.encode() not in store.path.read_bytes()
    assert store.read("agents/x").data == {"api": VALUE}
