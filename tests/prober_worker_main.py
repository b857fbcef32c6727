"""A prober host in its own process (``python -m tests.prober_worker_main <address> <queue>``),
for the test in which a worker dies (SIGKILL) while it runs an agent's prober."""

from __future__ import annotations

import asyncio
import sys

from temporalio.client import Client

from fleetops.converter import data_converter
from tests.prober_support import prober_worker


async def main(address: str, task_queue: str) -> None:
    """Run a prober host for ``task_queue`` until killed; print ``polling <host_id>`` once
    started."""
    client = await Client.connect(address, data_converter=data_converter())
    async with prober_worker(client, task_queue) as host:
        print(f"polling {host.host_id}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
