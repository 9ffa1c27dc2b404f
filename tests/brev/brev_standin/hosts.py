"""The instances' test hosts: one real sshd per RUNNING instance on its own loopback address, the keys,
and Brev's SSH config as the real CLI writes it (pkg/ssh/sshconfigurer.go, SSHConfigEntryTemplateV3)."""

import errno
import hashlib
import os
import shutil
import socket

from . import netns  # first: it puts tests/ (the shared tests/hosts) on sys.path
# pylint: disable=wrong-import-order,import-error
from hosts import common  # noqa: I100
from hosts import sshd as shared_sshd

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


def sshd_config(settings, instance):
    """The text of the instance's sshd_config (netns hosts: DOCKER_HOST for its logins names its own engine)."""
    hostdir = _host_dir(settings, instance)
    keys = settings.path("keys")
    text = shared_sshd.render(settings.ssh_port, instance["address"], os.path.join(keys, "host_ed25519"),
                              os.path.join(hostdir, "sshd.pid"), os.path.join(keys, "authorized_keys"),
                              header="# sshd of the Brev test instance %s (%s)\n" % (instance["name"], instance["id"]))
    if instance.get("hosts") == "netns":
        text += "SetEnv DOCKER_HOST=unix://%s\n" % netns.names(settings, instance)["sock"]
    return text


write_file = common.write_file


def ensure_keys(settings):
    """The test host key and the user's key pair (``keys/``), generated once."""
    return shared_sshd.ensure_keys(settings.path("keys"), "brev-standin")


def _host_key(settings):
    return shared_sshd.public_key(os.path.join(settings.path("keys"), "host_ed25519"))


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


def sshd_pid(settings, instance):
    """The pid of the instance's sshd when it runs (checked against its command line), else None."""
    hostdir = _host_dir(settings, instance)
    return shared_sshd.pid(os.path.join(hostdir, "sshd.pid"), os.path.join(hostdir, "sshd_config"))


def start_sshd(settings, instance):
    """Start the instance's sshd on its address (no-op when it runs)."""
    if sshd_pid(settings, instance):
        return
    ensure_keys(settings)
    hostdir = _host_dir(settings, instance)
    os.makedirs(hostdir, mode=0o700, exist_ok=True)
    prefix = []
    if instance.get("hosts") == "netns":
        prefix = ["nsenter", "--net=/run/netns/" + netns.names(settings, instance)["netns"]]
    shared_sshd.start(settings.sshd, os.path.join(hostdir, "sshd_config"), sshd_config(settings, instance),
                      os.path.join(hostdir, "sshd.pid"), os.path.join(hostdir, "sshd.log"), prefix=prefix)


def stop_sshd(settings, instance):
    """Stop the instance's sshd and every connection it serves (the machine went away)."""
    hostdir = _host_dir(settings, instance)
    shared_sshd.stop(os.path.join(hostdir, "sshd.pid"), os.path.join(hostdir, "sshd_config"))


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
    lines = [shared_sshd.known_hosts_line(instance["address"], settings.ssh_port, key) for instance in running]
    write_file(settings.path("known_hosts"), "".join(lines))
