# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run commands on a remote host over OpenSSH, and manage local port forwards.

Commands are argv lists (never a local shell string); the remote command is
one string of shell-quoted words. Secret values never go on a command line:
callers send them on stdin. A tunnel is one ``ssh -N -L`` process, started
in its own session so it outlives the module, and known afterwards by its
pid, its start time and its command line, so stopping it can never hit
another process that happens to reuse the pid.
"""

import os
import shlex
import subprocess
import tempfile
import time

from ansible_collections.tao.inference.plugins.module_utils import procs
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.trust import (
    check_host, check_path, check_port, check_user, ssh_environ,
)

# Module options of every platform that reaches a host with ssh (declared once, shared as they are).
SSH_OPTIONS = dict(
    ssh_key_path=dict(type="path", no_log=False),
    ssh_config=dict(type="path"),
)

# Options every long-lived ssh process gets: a user's ControlMaster/ControlPath settings would
# otherwise hand the forward to a shared master process that this collection cannot track.
NO_MULTIPLEXING = ["-o", "ControlMaster=no", "-o", "ControlPath=none",
                   # ... and a host's configuration (Brev's forwards the agent) never lends it the user's keys.
                   "-o", "ForwardAgent=no", "-o", "ForwardX11=no", "-o", "AddKeysToAgent=no"]


class SSHTarget(object):
    """How to reach one host with ``ssh`` in batch mode."""

    def __init__(self, host, user=None, port=None, key_path=None, config=None, connect_timeout=15,
                 what="ssh host", options=()):
        if not host:
            raise TaoInferenceError("an SSH host is required")
        # Validated here, where every ssh argv starts: nothing can be read by ssh as an option.
        self.host = check_host(host, what)
        self.user = check_user(user, "ssh user")
        self.port = check_port(port, "ssh port")
        self.key_path = check_path(key_path, "ssh_key_path")
        self.config = check_path(config, "ssh_config")
        self.connect_timeout = connect_timeout
        # Further ssh options, already checked word by word (see fleet.common_args): never parsed by a shell.
        self.options = list(options)

    @property
    def destination(self):
        return "%s@%s" % (self.user, self.host) if self.user else self.host

    def base_argv(self):
        argv = ["ssh"]
        if self.config:
            argv += ["-F", self.config]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.key_path:
            argv += ["-i", self.key_path, "-o", "IdentitiesOnly=yes"]
        argv += ["-o", "BatchMode=yes", "-o", "ConnectTimeout=%d" % self.connect_timeout]
        return argv + self.options

    def argv(self, *words, **options):
        """``ssh [options] [extra] -- destination words...``: the destination can never be an option."""
        return self.base_argv() + list(options.get("extra") or []) + ["--", self.destination] + list(words)

    def resolved_host(self):
        """The address ``ssh`` connects to for this host (its ``HostName`` in the ssh configuration)."""
        argv = ["ssh"] + (["-F", self.config] if self.config else []) + ["-G", "--", self.host]
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=15, check=False, env=ssh_environ())  # pylint: disable=ansible-bad-function
        except OSError as exc:
            raise TaoInferenceError("cannot run ssh (%s); install the OpenSSH client" % exc)
        except subprocess.TimeoutExpired:
            raise TaoInferenceError("`ssh -G %s` did not answer within 15 s; check the ssh configuration" % self.host)
        if proc.returncode != 0:
            raise TaoInferenceError("ssh cannot read its configuration for %s: %s" % (
                self.host, proc.stderr.decode("utf-8", "replace").strip() or "exit %d" % proc.returncode))
        for line in proc.stdout.decode("utf-8", "replace").splitlines():
            key, _sep, value = line.partition(" ")
            if key == "hostname" and value.strip():
                return check_host(value.strip(), "the HostName ssh gives for %s" % self.host)
        return self.host

    def run(self, words, stdin=None, timeout=120, check=True):
        """Run ``words`` (a list, shell-quoted here) on the host; return ``(rc, out, err)``."""
        remote = " ".join(w if isinstance(w, Raw) else shlex.quote(str(w)) for w in words)
        argv = self.argv(remote)
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, check=False,  # pylint: disable=ansible-bad-function
                                  env=ssh_environ())
        except OSError as exc:
            raise TaoInferenceError("cannot run ssh (%s); install the OpenSSH client" % exc)
        except subprocess.TimeoutExpired:
            raise TaoInferenceError("ssh %s timed out after %ss running: %s" % (self.destination, timeout, remote))
        out = proc.stdout.decode("utf-8", "replace")
        err = proc.stderr.decode("utf-8", "replace")
        if proc.returncode == 255:
            raise TaoInferenceError(
                "cannot reach %s over SSH: %s. Check the host, user, key and port (ssh must work in batch mode, "
                "without a password prompt)" % (self.destination, err.strip() or "ssh exited with 255"))
        if check and proc.returncode != 0:
            raise TaoInferenceError("on %s, `%s` failed (exit %d): %s"
                                    % (self.destination, remote, proc.returncode, (err or out).strip()))
        return proc.returncode, out, err


class Raw(str):
    """A remote shell fragment that :meth:`SSHTarget.run` must not quote."""


# -- tunnels ---------------------------------------------------------------------
def forward_spec(local_port, remote_host, remote_port):
    return "127.0.0.1:%d:%s:%d" % (local_port, remote_host, remote_port)


def tunnel_alive(pid, start_time, spec):
    """True when ``pid`` is still our ssh forward: not a zombie, not a reused pid, an ``ssh -N`` whose
    ``-L`` is exactly ``spec`` (another process that merely mentions it is not)."""
    if not spec or not procs.alive(pid, start_time):
        return False
    argv = procs.argv_of(pid)
    return bool(argv) and os.path.basename(argv[0]) == b"ssh" and b"-N" in argv and \
        any(argv[i] == b"-L" and argv[i + 1] == spec.encode("utf-8") for i in range(len(argv) - 1))


def _listening_inodes(port):
    """Inodes of the sockets listening on ``port`` (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.read().splitlines()[1:]
        except (IOError, OSError):
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _listens(pid, port):
    """True when process ``pid`` itself holds the listening socket on ``port``
    (another program answering on the port does not count)."""
    wanted = set("socket:[%s]" % inode for inode in _listening_inodes(port))
    if not wanted:
        return False
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, name)) in wanted:
                return True
        except OSError:
            continue
    return False


def open_tunnel(target, local_port, remote_host, remote_port, timeout=20):
    """Start ``ssh -N -L 127.0.0.1:local:remote_host:remote_port``; return ``(pid, start_time)``.

    Fails (and leaves no process) if the forward cannot be set up in ``timeout`` s."""
    spec = forward_spec(local_port, remote_host, remote_port)
    argv = target.argv(extra=NO_MULTIPLEXING + [
        "-N", "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=30", "-o", "ServerAliveCountMax=3",
        "-L", spec])
    errors = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,  # pylint: disable=ansible-bad-function
                                start_new_session=True, close_fds=True, env=ssh_environ())
    except OSError as exc:
        raise TaoInferenceError("cannot run ssh (%s); install the OpenSSH client" % exc)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.01  # ssh listens once its connection is made (a tenth of a second or so): look often at first
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                errors.seek(0)
                message = errors.read().decode("utf-8", "replace").strip()
                raise TaoInferenceError("the SSH tunnel %s through %s failed (exit %d): %s"
                                        % (spec, target.destination, proc.returncode, message or "no message"))
            if _listens(proc.pid, local_port):
                _state, started = procs.stat_of(proc.pid)
                return proc.pid, started
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)
        raise TaoInferenceError("the SSH tunnel %s through %s was not up after %ss"
                                % (spec, target.destination, timeout))
    except BaseException:
        # Not up, or this run was interrupted before it could record the tunnel: never leave it behind.
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        raise
    finally:
        errors.close()


def find_tunnels(remote_host, remote_port):
    """``(pid, start_time, spec)`` of every local ssh forward to ``remote_host:remote_port``
    (for a service whose registry entry was lost)."""
    suffix = (":%s:%d" % (remote_host, remote_port)).encode("utf-8")
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        argv = procs.argv_of(name)
        if not argv or os.path.basename(argv[0]) != b"ssh" or b"-N" not in argv or not _own(name):
            continue
        for word in argv:
            if word.startswith(b"127.0.0.1:") and word.endswith(suffix):
                _state, started = procs.stat_of(int(name))
                found.append((int(name), started, word.decode("utf-8")))
    return found


def _own(pid):
    """True when process ``pid`` runs as this user (root too only stops its own forwards)."""
    try:
        return os.stat("/proc/%s" % pid).st_uid == os.geteuid()
    except OSError:
        return False


def close_tunnel(pid, start_time, spec, timeout=5):
    """Stop exactly our tunnel process; True if it was running."""
    if not tunnel_alive(pid, start_time, spec) or not _own(pid):
        return False
    return procs.terminate(pid, start_time, timeout)
