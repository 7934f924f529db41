"""Drives the real Blaxel Python SDK (`blaxel` from PyPI) against a gateway on this machine.

Run by tests/tests/sdk_python.rs, which passes:
  GW_API_URL   https://api.gw.test:PORT/v0 (the SDK's API base URL, set after import)
  GW_DOMAIN    gw.test: every name under it resolves to 127.0.0.1, in this process only
  GW_SANDBOX   the sandbox to drive
  BL_API_KEY, BL_WORKSPACE, SSL_CERT_FILE (the gateway's CA), DO_NOT_TRACK=1

Nothing here can reach a host outside this machine: name resolution answers only for GW_DOMAIN
and loopback, and every connect() to a non-loopback address is refused and recorded. The result
is one JSON object on stdout; the Rust test checks it.
"""

import asyncio
import json
import os
import socket
import sys

DOMAIN = os.environ["GW_DOMAIN"]
BLOCKED = []

_getaddrinfo = socket.getaddrinfo


def _guarded_getaddrinfo(host, port, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name and (name == DOMAIN or name.endswith("." + DOMAIN)):
        return _getaddrinfo("127.0.0.1", port, *args, **kwargs)
    if name in (None, "localhost", "127.0.0.1", "::1"):
        return _getaddrinfo(name, port, *args, **kwargs)
    BLOCKED.append("resolve %s" % name)
    raise socket.gaierror(socket.EAI_NONAME, "blocked by the test: %s" % name)


def _loopback(address):
    host = address[0] if isinstance(address, tuple) else address
    return isinstance(host, str) and (host.startswith("127.") or host == "::1")


_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address):
        BLOCKED.append("connect %r" % (address,))
        raise ConnectionRefusedError("blocked by the test: %r" % (address,))
    return _connect(self, address)


def _guarded_connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address):
        BLOCKED.append("connect %r" % (address,))
        return 111
    return _connect_ex(self, address)


socket.getaddrinfo = _guarded_getaddrinfo
socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex

# Only now the SDK: whatever it does at import time goes through the guards.
from datetime import datetime, timedelta, timezone  # noqa: E402

import blaxel  # noqa: E402
import httpx  # noqa: E402
from blaxel.core import SandboxInstance  # noqa: E402
from blaxel.core.client.client import client  # noqa: E402

# The SDK has no setting for its API URL: point its one shared client at the gateway.
client.with_base_url(os.environ["GW_API_URL"])


def reply(r):
    try:
        body = r.json()
    except ValueError:
        body = r.text
    return {"status": r.status_code, "body": body}


async def main():
    name = os.environ["GW_SANDBOX"]
    out = {"sdk_version": blaxel.__version__}

    # SandboxInstance.get(name) → fetch(port, path): through the sandbox host, workspace token.
    sandbox = await SandboxInstance.get(name)
    out["metadata_url"] = sandbox.metadata.url
    out["fetch"] = reply(await sandbox.fetch(3000, "/hello?x=1"))

    # previews.create → tokens.create → a request with the token (and one without).
    preview = await sandbox.previews.create({"port": 3000, "name": "sdk-preview"})
    out["preview_url"] = preview.url
    out["preview_resource"] = preview.tokens.resource_name
    token = await preview.tokens.create(datetime.now(timezone.utc) + timedelta(hours=2))
    out["token_name"] = token.name
    async with httpx.AsyncClient(timeout=30) as http:
        with_token = await http.get(preview.url + "/via-preview?a=1", headers={"X-Blaxel-Preview-Token": token.value})
        out["preview_fetch"] = reply(with_token)
        out["preview_without_token"] = reply(await http.get(preview.url + "/via-preview"))
    out["tokens_listed"] = len(await preview.tokens.list())
    reused = await preview.tokens.create_if_expired()
    out["token_reused"] = reused.value == token.value
    out["previews_listed"] = sorted(p.name for p in await sandbox.previews.list())

    # sessions.create → from_session → fetch(port, path): the session's preview on 443.
    session = await sandbox.sessions.create()
    out["session_url"] = session.url
    remote = await SandboxInstance.from_session(session)
    out["session_fetch"] = reply(await remote.fetch(3000, "/from-session?b=2"))
    out["sessions_listed"] = len(await sandbox.sessions.list())

    # Deleting the preview: its URL stops answering.
    await sandbox.previews.delete("sdk-preview")
    async with httpx.AsyncClient(timeout=30) as http:
        out["preview_after_delete"] = reply(
            await http.get(preview.url + "/gone", headers={"X-Blaxel-Preview-Token": token.value})
        )

    out["blocked"] = BLOCKED
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # the Rust test prints stderr; say what the SDK raised
        print("SDK call failed: %s: %s (blocked: %s)" % (type(e).__name__, e, BLOCKED), file=sys.stderr)
        raise
