"""The local secret store's own promises: encrypted at rest, a generated 0600 key, a wrong key
refused, concurrent writers (threads and processes) never lose a write or corrupt the file."""

from __future__ import annotations

import base64
import logging
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pydantic import SecretStr

from activities.secret_stores import ops
from activities.secret_stores.base import SecretStoreMisconfigured
from activities.secret_stores.local import LocalStore
from fleetops.secrets import SecretRotation

KEY = SecretStr(base64.b64encode(b"k" * 32).decode())


def test_the_file_holds_no_plaintext(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, KEY)
    store.write("agents/demo", {"openai": "sk-plaintext-value-123"}, cas=0)
    ops.rotate(store, SecretRotation(path="agents/demo", key="openai"), "r1")
    rotated = store.read("agents/demo").data["openai"]
    blob = store.path.read_bytes()
    for needle in (b"sk-plaintext-value-123", rotated.encode(), b"openai", b"agents/demo"):
        assert needle not in blob
    assert LocalStore(tmp_path, KEY).read("agents/demo", 1).data == {
        "openai": "sk-plaintext-value-123"
    }


def test_a_wrong_key_or_a_damaged_file_is_refused(tmp_path: Path) -> None:
    LocalStore(tmp_path, KEY).write("a", {"k": "v"}, cas=0)
    other = SecretStr(base64.b64encode(b"x" * 32).decode())
    with pytest.raises(SecretStoreMisconfigured, match="wrong key"):
        LocalStore(tmp_path, other).read("a")
    with pytest.raises(SecretStoreMisconfigured, match="32"):
        LocalStore(tmp_path, SecretStr("c2hvcnQ=")).read("a")
    path = LocalStore(tmp_path, KEY).path
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(SecretStoreMisconfigured, match="damaged"):
        LocalStore(tmp_path, KEY).read("a")


def test_a_key_is_generated_once_with_mode_0600(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        LocalStore(tmp_path).write("a", {"k": "v"}, cas=0)
    key_file = tmp_path / "secrets" / "key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_file.read_text())) == 32
    assert "generated a key" in caplog.text and str(key_file) in caplog.text
    caplog.clear()
    assert LocalStore(tmp_path).read("a").data == {"k": "v"}  # the same key is read back
    assert "generated" not in caplog.text
    assert not [p for p in key_file.parent.iterdir() if p.name.startswith(".")], "temp files"


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    stores = [LocalStore(tmp_path, KEY) for _ in range(4)]  # separate instances: the file lock
    stores[0].write("a", {"n": "0"}, cas=0)

    def bump(store: LocalStore) -> None:
        for _ in range(10):
            store.write("a", {"n": "x"}, cas=None)

    threads = [threading.Thread(target=bump, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stores[0].metadata("a").current_version == 41


def test_concurrent_processes_lose_nothing(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from pydantic import SecretStr;"
        "from activities.secret_stores.local import LocalStore;"
        "s = LocalStore(Path(sys.argv[1]), SecretStr(sys.argv[2]));"
        "[s.write('a', {'n': str(i)}, cas=None) for i in range(15)]"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path), KEY.get_secret_value()], env=env
        )
        for _ in range(3)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    assert LocalStore(tmp_path, KEY).metadata("a").current_version == 45
