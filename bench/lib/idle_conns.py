#!/usr/bin/env python3
"""Scenario 6 client: open COUNT keep-alive connections, send one small
request on each and read its answer, then hold them all idle until RELEASE
exists (or HOLD_LIMIT seconds pass), then close them. Writes READY (a JSON
line with the counts) once every connection is open and idle.

usage: idle_conns.py HOST PORT COUNT HOST_HEADER PATH READY RELEASE [CONCURRENCY]
"""

import asyncio
import json
import os
import sys
import time

HOLD_LIMIT = 300


async def one(host, port, request, sem, held, failures):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), timeout=10
            )
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            status = head.split(b" ", 2)[1]
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await asyncio.wait_for(reader.readexactly(length), timeout=10)
            if status != b"200":
                failures.append(status.decode())
            held.append(writer)
        except Exception as e:  # counted, reported, never fatal
            failures.append(type(e).__name__)


async def main():
    host, port, count, host_header, path, ready, release = sys.argv[1:8]
    concurrency = int(sys.argv[8]) if len(sys.argv) > 8 else 200
    count = int(count)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: bench-idle\r\n\r\n"
    ).encode()
    sem = asyncio.Semaphore(concurrency)
    held, failures = [], []
    started = time.monotonic()
    await asyncio.gather(
        *(one(host, int(port), request, sem, held, failures) for _ in range(count))
    )
    summary = {
        "open": len(held),
        "failed": len(failures),
        "failure_kinds": sorted(set(failures))[:5],
        "open_seconds": round(time.monotonic() - started, 2),
    }
    with open(ready + ".tmp", "w") as f:
        f.write(json.dumps(summary) + "\n")
    os.rename(ready + ".tmp", ready)
    deadline = time.monotonic() + HOLD_LIMIT
    while not os.path.exists(release) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    for w in held:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
