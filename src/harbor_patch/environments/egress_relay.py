"""The egress relay: a TCP forwarder from a sandbox's internal network to the LiteLLM proxy.

Standalone on purpose: standard library only, no import of this package, so the sandbox host
runs it as `python3 -c <this file's text> <listen_port> <target_host> <target_port>` from the
agent-runtime image (already on every sandbox daemon; no image to build or pull). It accepts
connections on `listen_port` and joins each one to a new connection to the one target; it
knows no other address, parses nothing and keeps nothing. The target host is resolved for each
connection, so a proxy that moves keeps working.
"""

from __future__ import annotations

import asyncio
import sys

BUFFER = 65536
CONNECT_TIMEOUT_SEC = 15.0
MAX_CONNECTIONS = 256


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(BUFFER):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _serve_one(
    target: tuple[str, int],
    slots: asyncio.Semaphore,
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
) -> None:
    if slots.locked():
        client_writer.close()
        return
    async with slots:
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(*target), CONNECT_TIMEOUT_SEC
            )
        except (OSError, TimeoutError) as exc:
            print(f"egress relay: cannot reach {target[0]}:{target[1]}: {exc}", flush=True)
            client_writer.close()
            return
        try:
            await asyncio.gather(
                _pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer)
            )
        finally:
            for writer in (upstream_writer, client_writer):
                writer.close()


async def serve(listen_port: int, target_host: str, target_port: int) -> None:
    slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_one((target_host, target_port), slots, reader, writer)

    server = await asyncio.start_server(handle, "0.0.0.0", listen_port)
    print(f"egress relay: :{listen_port} -> {target_host}:{target_port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not argv[0].isdigit() or not argv[2].isdigit():
        print("usage: egress_relay LISTEN_PORT TARGET_HOST TARGET_PORT", file=sys.stderr)
        return 2
    asyncio.run(serve(int(argv[0]), argv[1], int(argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
