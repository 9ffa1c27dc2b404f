"""A test host's sshd: keys made for the tests, a config of its own, started (inside the host's namespaces
when given a prefix such as ``nsenter --net=...``) and stopped by the pid in its PidFile."""

import os
import subprocess
import time

from . import common

# Settings every test sshd shares; the caller's config adds Port, ListenAddress, HostKey, PidFile,
# AuthorizedKeysFile (and anything else) before these.
COMMON = """PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
GatewayPorts no
X11Forwarding no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 50
"""


def keygen(path, comment):
    """An ed25519 key pair at ``path`` (and ``path``.pub) without a passphrase, made once."""
    if not os.path.exists(path):
        common.must("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path)
    return path


def ensure_keys(keys, comment, host_keys=("host_ed25519",)):
    """In the folder ``keys`` (0700): the host key(s), the user's key pair ``id_ed25519`` and
    ``authorized_keys`` holding its public half; made once. Returns ``keys``."""
    os.makedirs(keys, mode=0o700, exist_ok=True)
    for name in tuple(host_keys) + ("id_ed25519",):
        keygen(os.path.join(keys, name), comment)
    authorized = os.path.join(keys, "authorized_keys")
    if not os.path.exists(authorized):
        with open(os.path.join(keys, "id_ed25519.pub"), encoding="utf-8") as handle:
            common.write_file(authorized, handle.read(), 0o600)
    return keys


def public_key(path):
    """``<type> <base64>`` of the public key ``path`` (``.pub`` added when missing)."""
    if not path.endswith(".pub"):
        path += ".pub"
    with open(path, encoding="utf-8") as handle:
        return " ".join(handle.read().split()[:2])


def known_hosts_line(address, port, key):
    """A known_hosts line for ``address:port``."""
    host = address if port == 22 else "[%s]:%d" % (address, port)
    return "%s %s\n" % (host, key)


def render(port, address, host_key, pidfile, authorized_keys, header="", extra=""):
    """The text of an sshd_config."""
    return "%sPort %d\nListenAddress %s\nHostKey %s\nPidFile %s\nAuthorizedKeysFile %s\n%s%s" % (
        header, port, address, host_key, pidfile, authorized_keys, COMMON, extra)


def pid(pidfile, config):
    """The pid of the sshd started with ``config`` when it runs (checked against its command line), else None."""
    return common.pid_from(pidfile, config)


def start(sshd, config, text, pidfile, log, prefix=(), timeout=5.0):
    """Write ``config`` and start ``sshd -f config`` (after ``prefix``, e.g. ``nsenter ...``) unless it runs;
    wait up to ``timeout`` seconds for its PidFile. Returns its pid (None when it did not come up)."""
    running = pid(pidfile, config)
    if running:
        return running
    common.write_file(config, text, 0o600)
    try:
        os.unlink(pidfile)
    except FileNotFoundError:
        pass
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    subprocess.run(list(prefix) + [sshd, "-f", config, "-E", log], check=False, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = pid(pidfile, config)
        if found:
            return found
        time.sleep(0.02)
    return None


def stop(pidfile, config, wait=2.0):
    """Stop the sshd and every connection it serves (its children: the machine goes away)."""
    found = pid(pidfile, config)
    if found is None:
        return
    common.signal_pids(common.children(found))
    common.stop(found, config, wait=wait, kill_after=False)
