"""The client's address and scheme as a trusted reverse proxy passed them (X-Forwarded-For,
X-Forwarded-Proto): logs, metrics and limits then see the client, not the proxy."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from aiohttp import web
from aiohttp.typedefs import Middleware

from csvstore.web.problems import Handler

Network = IPv4Network | IPv6Network


def parse_networks(text: str) -> list[Network]:
    return [ip_network(item.strip(), strict=False) for item in text.split(",") if item.strip()]


def forwarded_middleware(networks: Sequence[Network]) -> Middleware:
    def trusted(address: str) -> bool:
        try:
            ip = ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in networks)

    @web.middleware
    async def forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.remote
        # Anyone can send these headers: only a configured proxy's are believed.
        if peer is None or not trusted(peer):
            return await handler(request)
        hops = ",".join(request.headers.getall("X-Forwarded-For", ())).split(",")
        client = peer
        # From the right: each proxy appends the address it saw, so the first untrusted one
        # is the client; what a client wrote further left is never read.
        for hop in reversed([hop.strip() for hop in hops if hop.strip()]):
            if not trusted(client):
                break
            try:
                client = str(ip_address(hop))
            except ValueError:
                break
        proto = request.headers.get("X-Forwarded-Proto", "").rsplit(",", 1)[-1].strip().lower()
        if proto in {"http", "https"}:
            return await handler(request.clone(remote=client, scheme=proto))
        return await handler(request.clone(remote=client))

    return forwarded
