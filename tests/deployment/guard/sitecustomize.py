"""Loopback guard for every Python process of the deployment test (on their PYTHONPATH).

A DNS lookup or connect outside 127.0.0.0/8 and ::1 is refused (OSError) and recorded, one
line each, in ``$SMTASK_LOOPBACK_LOG``; the test fails when that file is not empty. Names of
this machine (``localhost``, its host name) pass; what they resolve to is checked on connect.
"""

from __future__ import annotations

import ipaddress
import os
import socket

_LOG = os.environ.get("SMTASK_LOOPBACK_LOG")


def _install(log: str) -> None:
    own = {"localhost", "localhost.localdomain", "", None, socket.gethostname()}

    def loopback(host: object) -> bool:
        if host in own:
            return True
        try:
            return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
        except ValueError:
            return False

    def refuse(what: str, host: object) -> None:
        with open(log, "a") as f:
            f.write(f"pid {os.getpid()}: {what} {host}\n")
        raise OSError(f"loopback guard: {what} to {host} refused in the deployment test")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(sock: socket.socket, address: object) -> object:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not loopback(address[0]):  # type: ignore[index]
            refuse("connect", address[0])  # type: ignore[index]
        return real_connect(sock, address)  # type: ignore[arg-type]

    def connect_ex(sock: socket.socket, address: object) -> object:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not loopback(address[0]):  # type: ignore[index]
            refuse("connect", address[0])  # type: ignore[index]
        return real_connect_ex(sock, address)  # type: ignore[arg-type]

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if not loopback(host):
            refuse("getaddrinfo", host)
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]


if _LOG:
    _install(_LOG)
