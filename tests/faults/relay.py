"""A TCP relay for the partition scenarios: ``python relay.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT``.

Prints ``listening`` once bound; each accepted connection is piped both ways to a new connection to the
target; when either side ends, both are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time


async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    finally:
        w.close()


async def main(lh: str, lp: int, th: str, tp: int) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            tr, tw = await asyncio.open_connection(th, tp)
        except OSError:
            w.close()
            return
        t0 = time.monotonic()
        ends = await asyncio.gather(_pipe(r, tw), _pipe(tr, w), return_exceptions=True)
        # One line per connection, to stderr (the scenario's relay log): how long it lived and how each way ended.
        print(f"{time.strftime('%H:%M:%S')} {lh}:{lp} -> {th}:{tp}: closed after {time.monotonic() - t0:.1f} s; "
              f"in->out {ends[0]!r}, out->in {ends[1]!r}", file=sys.stderr, flush=True)

    server = await asyncio.start_server(handle, lh, lp, reuse_address=True)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
