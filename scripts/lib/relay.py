#!/usr/bin/env python3
"""A UDP relay that delays every datagram, for `scripts/fault slow` (this kernel has no netem).

relay.py LISTEN_PORT TARGET_IP TARGET_PORT DELAY_MS JITTER_MS

Datagrams arriving on LISTEN_PORT (the host's firewall redirects its clients' QUIC traffic
here) go to TARGET from one socket per client, so the server still sees one peer per client;
replies go back through the listening socket. Each datagram, in each direction, waits
DELAY_MS plus a uniform random -JITTER_MS..+JITTER_MS (never below zero): jitter reorders.
"""
import asyncio
import random
import sys


def wait_s(delay, jitter):
    return max(0.0, delay + random.uniform(-jitter, jitter)) / 1000.0


class Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay, client):
        self.relay, self.client, self.transport = relay, client, None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.relay.later(lambda: self.relay.transport.sendto(data, self.client))


class Relay(asyncio.DatagramProtocol):
    def __init__(self, target, delay, jitter):
        self.target, self.delay, self.jitter = target, delay, jitter
        self.upstreams, self.transport, self.pending = {}, None, {}

    def connection_made(self, transport):
        self.transport = transport

    def later(self, send):
        asyncio.get_running_loop().call_later(wait_s(self.delay, self.jitter), send)

    def datagram_received(self, data, client):
        up = self.upstreams.get(client)
        if up is None:
            # Until its socket exists, the client's datagrams queue up in order.
            if client in self.pending:
                self.pending[client].append(data)
                return
            self.pending[client] = [data]
            asyncio.ensure_future(self.open_upstream(client))
            return
        self.later(lambda: up.transport.sendto(data))

    async def open_upstream(self, client):
        loop = asyncio.get_running_loop()
        _, up = await loop.create_datagram_endpoint(lambda: Upstream(self, client), remote_addr=self.target)
        self.upstreams[client] = up
        for data in self.pending.pop(client, []):
            self.later(lambda d=data: up.transport.sendto(d))


async def main():
    port, ip, tport, delay, jitter = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: Relay((ip, tport), delay, jitter), local_addr=("0.0.0.0", port))
    await asyncio.Event().wait()


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    asyncio.run(main())
