"""Another local user, for the tests of the pilot's attack surface (``docs/security.md``).

:func:`probe_ports` runs, as that user and with the system Python (the
project's virtualenv may be in root's home), what an attacker on the same
machine does first: find the victim's listening ports in ``/proc/net/tcp``
(the uid column), then greet each one as a ZeroMQ peer and read which
security mechanism it announces.  A port that announces ``NULL`` talks to
anyone; ``CURVE`` talks only to a peer that holds the keys.
"""
from __future__ import annotations

import json
import os
import pwd
import subprocess
import textwrap
from typing import Dict, Iterable

import psutil
import pytest

NAME = "rcylonstranger"

#: Source of ``victim_ports(uid)``: the ports ``uid`` listens on, found as an attacker finds them
#: (``/proc/net/tcp``'s uid column).  Scripts run by :func:`run_as` start with it.
FIND_PORTS = textwrap.dedent("""
    def victim_ports(victim):
        ports = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in open(table).read().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A" and int(f[7]) == victim:  # LISTEN, and the victim's
                    ports.add(int(f[1].split(":")[1], 16))
        return ports
""")

PROBE = FIND_PORTS + textwrap.dedent("""
    import json, socket, sys

    def read(s, n):
        data = b""
        while len(data) < n:
            chunk = s.recv(n - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def mechanism(host, port):
        # ZMTP 3: send the signature only and read the peer's greeting before it sees a mechanism of
        # ours (a CURVE peer drops a NULL one at once, and the reset can swallow what it had sent)
        try:
            s = socket.create_connection((host, port), timeout=2.0)
        except OSError as err:
            return "unreachable: " + type(err).__name__
        try:
            s.sendall(b"\\xff" + b"\\x00" * 8 + b"\\x7f")
            head = read(s, 10)
            if len(head) < 10 or head[0] != 0xff or head[9] != 0x7f:
                return "not ZeroMQ"
            s.sendall(b"\\x03\\x00")
            rest = read(s, 54)
            return rest[2:22].rstrip(b"\\x00").decode() if len(rest) >= 22 else "closed"
        except OSError as err:
            return "closed: " + type(err).__name__
        finally:
            s.close()

    victim, hosts, extra = int(sys.argv[1]), sys.argv[2].split(","), [int(p) for p in sys.argv[3:]]
    ports = victim_ports(victim) | set(extra)
    print(json.dumps({"ports": sorted(ports),
                      "mechanisms": {h: {p: mechanism(h, p) for p in sorted(ports)} for h in hosts}}))
""")


def user() -> pwd.struct_passwd:
    """The second local user (created when the tests run as root; the test is skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("creating a second local user needs root")
    try:
        return pwd.getpwnam(NAME)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", NAME], check=True,
                       capture_output=True)
        return pwd.getpwnam(NAME)


def run_as(script: str, *args: str, timeout: float = 300) -> str:
    """Run ``script`` with the system Python as the stranger; its standard output."""
    stranger = user()
    out = subprocess.run(["/usr/bin/python3", "-c", script, *args], user=stranger.pw_uid, group=stranger.pw_gid,
                         extra_groups=[], cwd="/", env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout


def probe_ports(hosts: Iterable[str], also: Iterable[int] = ()) -> Dict[str, Dict[int, str]]:
    """Each of this user's listening ports (and ``also``), greeted by the stranger on each of ``hosts``.

    Returns ``{host: {port: mechanism}}``: ``"NULL"``, ``"CURVE"``, or why there was none.
    """
    found = json.loads(run_as(PROBE, str(os.getuid()), ",".join(hosts), *map(str, also)))
    return {host: {int(port): mech for port, mech in by_port.items()} for host, by_port in found["mechanisms"].items()}


def host_address() -> str:
    """This machine's first address beyond loopback (the test is skipped where it has none)."""
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family.name == "AF_INET" and not a.address.startswith("127."):
                return a.address
    pytest.skip("this machine has no address beyond loopback")
