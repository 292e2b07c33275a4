"""Loaded by every Python child process whose PYTHONPATH starts with this folder (tests/security/test_no_outbound_traffic.py).

An audit hook records every name lookup and every connection attempt to an address that is not
loopback, one JSON line each in $RADPLAN_NET_AUDIT_LOG, and refuses it (so a test run never phones home).
"""

import ipaddress
import json
import os
import sys

_LOG = os.environ.get("RADPLAN_NET_AUDIT_LOG")
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


def _is_loopback(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False  # a name: resolving it is a DNS lookup
    return address.is_loopback or address.is_unspecified


def _hook(event, args):
    if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"):
        host = args[0]
    elif event in ("socket.connect", "socket.sendto"):
        address = args[1]
        if not isinstance(address, tuple):  # AF_UNIX path
            return
        host = address[0]
    else:
        return
    if _is_loopback(host):
        return
    with open(_LOG, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"pid": os.getpid(), "event": event, "host": str(host), "argv": sys.argv[:3]}) + "\n")
    raise OSError(f"outbound network use blocked by the test's audit hook: {event} {host}")


if _LOG:
    sys.addaudithook(_hook)
