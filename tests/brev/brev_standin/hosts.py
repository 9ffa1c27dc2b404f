"""The instances' test hosts: one real sshd per RUNNING instance on its own loopback address, the keys,
and Brev's SSH config as the real CLI writes it (pkg/ssh/sshconfigurer.go, SSHConfigEntryTemplateV3)."""

import errno
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time

from . import netns

SSH_USER = "root"

# SSHConfigEntryTemplateV3 of the real CLI, RunRemoteCMD false (its empty branch leaves a blank line).
ENTRY = """Host {alias}
  Hostname {hostname}
  IdentityFile "{identity}"
  User {user}
  ServerAliveInterval 30
  UserKnownHostsFile /dev/null
  IdentitiesOnly yes
  StrictHostKeyChecking no
  PasswordAuthentication no
  AddKeysToAgent yes
  ForwardAgent yes
  RequestTTY yes
  ControlMaster auto
  ControlPath {control}
  ControlPersist 10m
  Port {port}

"""

SSHD_CONFIG = """# sshd of the Brev test instance {name} ({id})
Port {port}
ListenAddress {address}
HostKey {keys}/host_ed25519
PidFile {hostdir}/sshd.pid
AuthorizedKeysFile {keys}/authorized_keys
PermitRootLogin prohibit-password
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


def write_file(path, text, mode=0o644):
    """Replace ``path`` atomically with ``text``."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def ensure_keys(settings):
    """The test host key and the user's key pair (``keys/``), generated once."""
    keys = settings.path("keys")
    os.makedirs(keys, mode=0o700, exist_ok=True)
    for name in ("host_ed25519", "id_ed25519"):
        if not os.path.exists(os.path.join(keys, name)):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "brev-standin", "-f", os.path.join(keys, name)],
                           check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    authorized = os.path.join(keys, "authorized_keys")
    if not os.path.exists(authorized):
        with open(os.path.join(keys, "id_ed25519.pub"), encoding="utf-8") as handle:
            write_file(authorized, handle.read(), 0o600)
    return keys


def _host_key(settings):
    with open(os.path.join(settings.path("keys"), "host_ed25519.pub"), encoding="utf-8") as handle:
        return " ".join(handle.read().split()[:2])


def bindable(address, port):
    """Whether nothing else listens on ``address:port`` (a failed bind for lack of privilege counts as free)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((address, port))
        return True
    except OSError as exc:
        return exc.errno == errno.EACCES
    finally:
        probe.close()


def allocate_address(settings, taken):
    """The lowest free instance address of the subnet (.10 to .250)."""
    for host in range(10, 251):
        address = "%s.%d" % (settings.subnet, host)
        if address not in taken and bindable(address, settings.ssh_port):
            return address
    raise RuntimeError("no free test address left in %s.0/24" % settings.subnet)


def _host_dir(settings, instance):
    return settings.path("hosts", instance["id"])


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _stat_fields(pid):
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def sshd_pid(settings, instance):
    """The pid of the instance's sshd when it runs (checked against its command line), else None."""
    hostdir = _host_dir(settings, instance)
    try:
        with open(os.path.join(hostdir, "sshd.pid"), encoding="utf-8") as handle:
            pid = int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    fields = _stat_fields(pid)
    if not fields or fields[0] == "Z":
        return None
    if os.path.join(hostdir, "sshd_config") not in _cmdline(pid):
        return None
    return pid


def start_sshd(settings, instance):
    """Start the instance's sshd on its address (no-op when it runs)."""
    if sshd_pid(settings, instance):
        return
    keys = ensure_keys(settings)
    hostdir = _host_dir(settings, instance)
    os.makedirs(hostdir, mode=0o700, exist_ok=True)
    config = os.path.join(hostdir, "sshd_config")
    text = SSHD_CONFIG.format(name=instance["name"], id=instance["id"], port=settings.ssh_port, address=instance["address"],
                              keys=keys, hostdir=hostdir)
    prefix = []
    if instance.get("hosts") == "netns":
        parts = netns.names(settings, instance)
        text += "SetEnv DOCKER_HOST=unix://%s\n" % parts["sock"]
        prefix = ["nsenter", "--net=/run/netns/" + parts["netns"]]
    write_file(config, text, 0o600)
    try:
        os.unlink(os.path.join(hostdir, "sshd.pid"))
    except FileNotFoundError:
        pass
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    subprocess.run(prefix + [settings.sshd, "-f", config, "-E", os.path.join(hostdir, "sshd.log")], check=False,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if sshd_pid(settings, instance):
            return
        time.sleep(0.02)


def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and fields[1] == str(pid):
                found.append(int(entry))
    return found


def stop_sshd(settings, instance):
    """Stop the instance's sshd and every connection it serves (the machine went away)."""
    pid = sshd_pid(settings, instance)
    if pid is None:
        return
    for child in _children(pid):
        try:
            os.kill(child, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and sshd_pid(settings, instance):
        time.sleep(0.02)


def remove_host(settings, instance):
    """Stop the sshd and forget the host's files."""
    stop_sshd(settings, instance)
    shutil.rmtree(_host_dir(settings, instance), ignore_errors=True)


def control_dir(settings):
    """Where the ControlPath sockets go: ``<home>/.ssh`` as in the real config (``~/.ssh/brev-control-%C``),
    unless that path is too long for a socket (108 bytes); then ``/tmp/brev-control-<hash of TAO_BREV_DIR>``."""
    ssh_dir = os.path.join(settings.home, ".ssh")
    if len(ssh_dir) + len("/brev-control-") + 40 <= 100:
        return ssh_dir
    return "/tmp/brev-control-" + hashlib.sha1(settings.dir.encode("utf-8")).hexdigest()[:12]


def render_ssh_config(settings, running):
    """The text of ``~/.brev/ssh_config`` for the RUNNING instances."""
    user_config = os.path.join(settings.home, ".ssh", "config")
    identity = os.path.join(settings.home, ".brev", "brev.pem")
    control = os.path.join(control_dir(settings), "brev-control-%C")
    text = "# included in %s\n" % user_config
    for instance in running:
        for alias in (instance["name"], instance["name"] + "-host"):
            text += ENTRY.format(alias=alias, hostname=instance["address"], identity=identity, user=SSH_USER,
                                 control=control, port=settings.ssh_port)
    return text


def write_ssh_config(settings, running):
    """What ``brev refresh`` writes: the private key, ``~/.brev/ssh_config`` (and its copy in the state
    folder), the ``Include`` at the top of ``~/.ssh/config``, and known_hosts for the test host key."""
    keys = ensure_keys(settings)
    brev_dir = os.path.join(settings.home, ".brev")
    ssh_dir = os.path.join(settings.home, ".ssh")
    os.makedirs(brev_dir, mode=0o755, exist_ok=True)
    os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
    os.makedirs(control_dir(settings), mode=0o700, exist_ok=True)
    with open(os.path.join(keys, "id_ed25519"), encoding="utf-8") as handle:
        write_file(os.path.join(brev_dir, "brev.pem"), handle.read(), 0o600)
    text = render_ssh_config(settings, running)
    brev_config = os.path.join(brev_dir, "ssh_config")
    write_file(brev_config, text)
    write_file(settings.path("ssh_config"), text)
    user_config = os.path.join(ssh_dir, "config")
    try:
        with open(user_config, encoding="utf-8") as handle:
            current = handle.read()
    except FileNotFoundError:
        current = ""
    include = 'Include "%s"\n' % brev_config
    if include not in current:
        write_file(user_config, include + current, 0o600)
    key = _host_key(settings)
    lines = []
    for instance in running:
        host = instance["address"] if settings.ssh_port == 22 else "[%s]:%d" % (instance["address"], settings.ssh_port)
        lines.append("%s %s\n" % (host, key))
    write_file(settings.path("known_hosts"), "".join(lines))
