"""A loopback TCP forwarder that limits each connection's rate (and optionally the total), for the bench.

    python bench/throttle.py UPSTREAM_PORT [--per-connection BYTES_PER_S] [--total BYTES_PER_S] [--up-total BYTES_PER_S]

It listens on a free port of 127.0.0.1 (printed as the first line of stdout) and forwards every
connection to 127.0.0.1:UPSTREAM_PORT. Bytes from upstream to the client pass a token bucket of
their connection (--per-connection) and one bucket shared by all connections (--total), as a link
that caps each TCP stream (a CDN, S3) and one with a fixed capacity would. Bytes going up (requests,
and the bodies of uploads) pass only a bucket shared by all connections (--up-total), as the uplink
of a publisher's machine would. 0 means unlimited.

Commands on stdin, one per line, each answered by one line of JSON on stdout:
    stats                     bytes down (upstream to client) and up, connections, the proxy's CPU seconds
    reset                     zero the byte and connection counters
    rates PER_CONNECTION TOTAL  change the limits for connections opened from now on (and the total at once)

`Throttle` runs it as a child process (its own interpreter, so its CPU is its own) and speaks those commands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

READ_SIZE = 256 * 1024  # per read from upstream: ~13 ms of a 20 MB/s connection
BURST_SECONDS = 0.02  # a bucket holds at most this much of its rate (and at least one read)


class Bucket:
    """A token bucket that lends: take(n) spends n at once and sleeps off any debt, so the average
    rate is exact whatever the sizes of the reads, and takers sharing one bucket queue up behind
    each other's debt."""

    def __init__(self, rate: float):
        self.rate = rate
        self.capacity = max(rate * BURST_SECONDS, READ_SIZE)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    async def take(self, count: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= count
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


class Proxy:
    def __init__(self, upstream_port: int, per_connection: float, total: float, up_total: float = 0):
        self.upstream_port = upstream_port
        self.per_connection = per_connection
        self.total, self.up_total = Bucket(total), Bucket(up_total)
        self.down = self.up = self.connections = self.open = self.most_open = 0

    async def handle(self, client_reader, client_writer) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.upstream_port, limit=4 * READ_SIZE
            )
        except OSError:
            self.open -= 1
            client_writer.close()
            return
        own = Bucket(self.per_connection)
        try:
            await asyncio.gather(
                self.pipe(client_reader, upstream_writer, None),
                self.pipe(upstream_reader, client_writer, own),
            )
        finally:
            self.open -= 1
            for writer in (client_writer, upstream_writer):
                writer.close()

    async def pipe(self, reader, writer, bucket: Bucket | None) -> None:
        try:
            while block := await reader.read(READ_SIZE):
                if bucket is None:
                    await self.up_total.take(len(block))
                    self.up += len(block)
                else:
                    await bucket.take(len(block))
                    await self.total.take(len(block))
                    self.down += len(block)
                writer.write(block)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            writer.close()  # one side went away: end the other direction too

    def command(self, line: str) -> dict:
        words = line.split()
        if words[:1] == ["reset"]:
            self.down = self.up = self.connections = 0
            self.most_open = self.open
        elif words[:1] == ["rates"] and len(words) == 3:
            self.per_connection = float(words[1])
            self.total = Bucket(float(words[2]))
        elif words[:1] != ["stats"]:
            return {"error": f"unknown command {line!r}"}
        times = os.times()
        return {
            "down": self.down,
            "up": self.up,
            "connections": self.connections,
            "most_open": self.most_open,
            "cpu": times.user + times.system,
        }


async def serve(arguments) -> None:
    proxy = Proxy(arguments.upstream_port, arguments.per_connection, arguments.total, arguments.up_total)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", arguments.port, limit=4 * READ_SIZE)
    print(server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()

    def commands():  # stdin in a thread; each command runs in the loop, between two reads
        for line in sys.stdin:
            answer = asyncio.run_coroutine_threadsafe(_call(proxy.command, line), loop).result()
            print(json.dumps(answer), flush=True)
        loop.call_soon_threadsafe(server.close)  # stdin closed: the bench is gone

    threading.Thread(target=commands, daemon=True).start()
    async with server:
        try:
            await server.serve_forever()
        except asyncio.CancelledError:
            pass


async def _call(function, *args):
    return function(*args)


class Throttle:
    """The forwarder as a child process: `port`, `stats()`, `reset()`, `rates()`, `stop()`."""

    def __init__(self, upstream_port: int, per_connection: float = 0, total: float = 0, up_total: float = 0):
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(upstream_port),
             "--per-connection", str(per_connection), "--total", str(total), "--up-total", str(up_total)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.port = int(self.process.stdout.readline())

    def _ask(self, line: str) -> dict:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def stats(self) -> dict:
        return self._ask("stats")

    def reset(self) -> dict:
        return self._ask("reset")

    def rates(self, per_connection: float = 0, total: float = 0) -> dict:
        return self._ask(f"rates {per_connection} {total}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.process.stdin.close()
        self.process.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("upstream_port", type=int)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--per-connection", type=float, default=0, help="bytes/s for each connection (0: no limit)")
    parser.add_argument("--total", type=float, default=0, help="bytes/s for all connections together (0: no limit)")
    parser.add_argument("--up-total", type=float, default=0, help="bytes/s sent up by all connections (0: no limit)")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
