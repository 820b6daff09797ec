"""sfu.app.http_server.Server: uvicorn's housekeeping once a second, exit at once."""

import asyncio
import signal
import sys

import uvicorn

from sfu.app.http_server import TICK_SECONDS, Server
from sfu.app.metrics_server import metrics_app


class CountingServer(Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ticks = 0

    async def on_tick(self, counter: int) -> bool:
        self.ticks += 1
        return await super().on_tick(counter)


async def started(server: Server) -> asyncio.Task[None]:
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the server did not start"
        await asyncio.sleep(0.01)
    return task


def config() -> uvicorn.Config:
    return uvicorn.Config(
        metrics_app, host="127.0.0.1", port=0, lifespan="off", log_level="warning"
    )


async def test_ticks_once_a_second_and_keeps_its_date_header_fresh():
    server = CountingServer(config())
    task = await started(server)
    first_date = dict(server.server_state.default_headers)[b"date"]
    await asyncio.sleep(2.5 * TICK_SECONDS)
    assert server.ticks in (3, 4)  # uvicorn's own loop: 25
    assert dict(server.server_state.default_headers)[b"date"] != first_date
    server.request_exit()
    await asyncio.wait_for(task, 5)


async def test_request_exit_stops_it_at_once():
    server = Server(config())
    task = await started(server)
    loop = asyncio.get_running_loop()
    asked = loop.time()
    server.request_exit()
    await asyncio.wait_for(task, 5)
    assert loop.time() - asked < TICK_SECONDS / 2


SERVE_UNTIL_SIGNALLED = """
import asyncio, sys, uvicorn
from sfu.app.http_server import Server
from sfu.app.metrics_server import metrics_app

async def main():
    config = uvicorn.Config(metrics_app, host="127.0.0.1", port=0, lifespan="off")
    server = Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    print("ready", flush=True)
    await task

asyncio.run(main())
"""


async def test_a_signal_stops_it_at_once():
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVE_UNTIL_SIGNALLED, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert await asyncio.wait_for(process.stdout.readline(), 30) == b"ready\n"
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        asked = loop.time()
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)
        assert loop.time() - asked < TICK_SECONDS / 2
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
