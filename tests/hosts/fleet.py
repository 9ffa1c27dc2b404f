"""The fleet's test hosts (``scripts/ensure-fleet.sh``): N hosts on this machine that really are separate.

Host ``i`` (``<name>-<i>``, e.g. ``fleet-1``) is:
- a network namespace on a veth: its address ``<net>.<i>.2`` on ``eth0`` inside, this machine's end
  ``<net>.<i>.1``, nothing routed beyond the /24 (it reaches only this machine's end and its own loopback);
- a mount and a UTS namespace, kept by files under ``/run/tao-fleet-<tag>/<i>/``: its own hostname, home of
  the login user (root), ``/tmp``, ``/run``, ``/etc/machine-id`` and ``/etc/hostname`` (private mounts; the
  Python installation the modules run with is bound in read-only when it lives in the home);
- its own dockerd inside those namespaces (data root under the host's folder, exec root, socket and the rest
  of ``/run`` private, ``--bip 172.30.<i>.1/24``), reached by its logins at ``/var/run/docker.sock`` as on any
  machine and from this machine at ``/proc/<dockerd pid>/root/run/docker.sock``; the machine's reference
  image loaded into it;
- its own sshd on ``<address>:22`` (host key of its own; the user's key made for the tests).

Files (``TAO_FLEET_DIR``, default ``.build/fleet``): ``inventory.ini`` (group ``gpu``), ``known_hosts``,
``ssh_config`` (``ssh -F .build/fleet/ssh_config fleet-1``), ``hosts.json`` (what the tests read),
``keys/`` and ``hosts/<name>/`` (the host's home, tmp, docker data root, sshd and dockerd files and logs).
"""

import concurrent.futures
import fcntl
import hashlib
import ipaddress
import json
import os
import pwd
import re
import socket
import subprocess
import sys
import time

from . import common, engine, netns, sshd

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
USER = "root"
SAFE_PATH = re.compile(r"/[A-Za-z0-9._+/-]*")  # fullmatch: no newline at the end
STAT = "/usr/bin/stat" if os.path.exists("/usr/bin/stat") else "/bin/stat"
# The hosts' networks tried in turn when TAO_FLEET_NET is not set: 10.198 first.
DEFAULT_NETS = ("10.198", "10.197", "10.196", "10.195", "10.194", "10.193", "10.192", "10.191", "10.190")


def _two_octets(net):
    return bool(re.fullmatch(r"(\d{1,3})\.(\d{1,3})", net)) and max(int(p) for p in net.split(".")) <= 255


def log(text):
    """A line of progress on stderr."""
    sys.stderr.write("ensure-fleet: %s\n" % text)
    sys.stderr.flush()


def _under(path, parent):
    return path == parent or path.startswith(parent.rstrip("/") + "/")


class Settings:
    """The TAO_FLEET_* environment, checked."""

    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        self.home = pwd.getpwnam(USER).pw_dir
        self.dir = self._path(env.get("TAO_FLEET_DIR") or os.path.join(REPO, ".build", "fleet"), "TAO_FLEET_DIR")
        # Refused by main() before hosts are made; --down and --status work wherever the folder is.
        self.dir_problem = None
        for private in ("/tmp", "/run", "/var/run", self.home):
            if _under(self.dir, os.path.realpath(private)):
                self.dir_problem = ("TAO_FLEET_DIR %s is under %s, which every test host replaces with its own: "
                                    "choose a folder elsewhere (e.g. /var/lib/tao-fleet)" % (self.dir, private))
                break
        # Without TAO_FLEET_NET: the net this fleet was made on (DIR/net), else the first free one (choose_net).
        self.net_given = bool(env.get("TAO_FLEET_NET"))
        self.net = (env.get("TAO_FLEET_NET") or self._recorded_net() or DEFAULT_NETS[0]).strip(".")
        if not _two_octets(self.net):
            raise ValueError("TAO_FLEET_NET must be the first two octets of the hosts' networks, e.g. 10.198")
        self.bip_net = (env.get("TAO_FLEET_BIP_NET") or "172.30").strip(".")
        if not _two_octets(self.bip_net):
            raise ValueError("TAO_FLEET_BIP_NET must be the first two octets of the hosts' docker0 networks, e.g. 172.30")
        self.name = env.get("TAO_FLEET_NAME") or "fleet"
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,30}", self.name):
            raise ValueError("TAO_FLEET_NAME must be lower-case letters, digits and '-' (starting with a letter), "
                             "at most 31 characters")
        self.python = self._path(env.get("TAO_FLEET_PYTHON") or os.path.join(REPO, ".venv", "bin", "python"),
                                 "TAO_FLEET_PYTHON", resolve=False)
        self.images = sorted({part.strip() for part in (env.get("TAO_FLEET_IMAGES") or "tao-inference-emulator:latest")
                              .split(",") if part.strip()})
        if os.path.lexists(self.dir) and os.lstat(self.dir).st_uid != os.geteuid():
            raise ValueError("%s belongs to uid %d, not to you: remove it or set TAO_FLEET_DIR to a folder of your "
                             "own" % (self.dir, os.lstat(self.dir).st_uid))
        self.sshd = env.get("TAO_FLEET_SSHD") or "/usr/sbin/sshd"
        self.port = 22
        self.tag = hashlib.sha1(self.dir.encode("utf-8")).hexdigest()[:6]
        self.nsroot = "/run/tao-fleet-" + self.tag

    def _recorded_net(self):
        try:
            with open(os.path.join(self.dir, "net"), encoding="utf-8") as handle:
                net = handle.read().strip()
        except OSError:
            return None
        return net if _two_octets(net) else None

    def choose_net(self, count):
        """Without TAO_FLEET_NET: the net this fleet was made on when its hosts 1..count are up there or free,
        else the first of DEFAULT_NETS where they are (another checkout's fleet, a VPN... may hold 10.198).
        Recorded in DIR/net by :func:`up`."""
        if self.net_given:
            return
        recorded = self._recorded_net()
        for net in () if recorded else DEFAULT_NETS:  # DIR/net gone with its folder: the net host 1 still holds
            self.net = net
            if Host(self, 1).network_ours():
                recorded = net
                break
        addresses = common.host_addresses()
        for net in ((recorded,) if recorded else ()) + DEFAULT_NETS:
            self.net = net
            if all(host.network_ours() or not (host.gateway in addresses or host.route_clash())
                   for host in (Host(self, index) for index in range(1, count + 1))):
                return
        raise ValueError("%s.1-%d/24 are all in use on this machine: set TAO_FLEET_NET to a free /16"
                         % (", ".join(DEFAULT_NETS), count))

    def record_net(self):
        """DIR/net: the net the hosts are on, so that later runs (and --status) keep it."""
        common.update_file(self.path("net"), self.net + "\n", 0o644)

    @staticmethod
    def _path(value, what, resolve=True):
        path = os.path.realpath(value) if resolve else os.path.abspath(value)
        if not SAFE_PATH.fullmatch(path):
            raise ValueError("%s %r: use a path of letters, digits and . _ + - / only (it goes into sshd and "
                             "inventory files unquoted)" % (what, value))
        return path

    def path(self, *parts):
        """A path under the fleet's folder."""
        return os.path.join(self.dir, *parts)

    def interpreter_paths(self):
        """The real paths the module interpreter needs: itself, its prefix and its base installation."""
        proc = common.run(self.python, "-I", "-c", "import os, sys; import httpx; "
                          "print('\\n'.join(os.path.realpath(p) for p in (sys.executable, sys.prefix, sys.base_prefix)))")
        if proc.returncode:
            raise ValueError("%s cannot run modules on the test hosts (it must import httpx): run `make venv`, or set "
                             "TAO_FLEET_PYTHON to a python that can: %s"
                             % (self.python, (proc.stderr.strip().splitlines() or ["?"])[-1]))
        paths = [line for line in proc.stdout.splitlines() if line]
        for path in paths + [self.python]:
            if _under(path, "/tmp") or _under(path, "/run"):
                raise ValueError("TAO_FLEET_PYTHON %s lives under /tmp or /run, which every test host replaces with "
                                 "its own: use a python installed elsewhere" % path)
        return paths


class Host:
    """Test host ``index`` of the fleet."""

    def __init__(self, settings, index, name=None):
        self.settings = settings
        self.index = index
        self.name = name or "%s-%d" % (settings.name, index)
        self.netns = "tao-fleet-%s-%d" % (settings.tag, index)
        self.host_if = "tf%s-%d" % (settings.tag, index)
        self.peer = "tp%s-%d" % (settings.tag, index)
        self.gateway = "%s.%d.1" % (settings.net, index)
        self.address = "%s.%d.2" % (settings.net, index)
        self.bip = "%s.%d.1/24" % (settings.bip_net, index)
        self.nsdir = os.path.join(settings.nsroot, str(index))
        self.dir = settings.path("hosts", self.name)

    def file(self, name):
        """A path in the host's folder."""
        return os.path.join(self.dir, name)

    @property
    def mnt(self):
        """The file keeping the host's mount namespace."""
        return os.path.join(self.nsdir, "mnt")

    @property
    def uts(self):
        """The file keeping the host's UTS namespace (its hostname)."""
        return os.path.join(self.nsdir, "uts")

    def enter(self):
        """The ``nsenter`` prefix that runs a command inside the host."""
        return ["nsenter", "--net=" + netns.path(self.netns), "--mount=" + self.mnt, "--uts=" + self.uts, "--"]

    # --- state ---------------------------------------------------------------------------------------

    def mnt_inode(self):
        """The inode of the host's mount namespace (None when its file is not a namespace)."""
        if not mounted(self.mnt):
            return None
        try:
            return os.stat(self.mnt).st_ino
        except OSError:
            return None

    def in_host(self, pid):
        """Whether ``pid`` runs in the host's mount namespace."""
        return pid in self.pids_inside((pid,))

    def pids_inside(self, pids=None):
        """Those of ``pids`` (default: every pid on this machine) that run in the host's mount namespace."""
        inode = self.mnt_inode()
        if inode is None:
            return []
        wanted, found = "mnt:[%d]" % inode, []
        for pid in all_pids() if pids is None else pids:
            try:
                if os.readlink("/proc/%d/ns/mnt" % pid) == wanted:
                    found.append(pid)
            except OSError:
                continue
        return found

    def namespaces_ok(self):
        """Namespace, veth, addresses and the mount and UTS namespaces are there, and the mount namespace's
        /tmp and home are this folder's."""
        return self.network_ours() and mounted(self.mnt) and mounted(self.uts) and self.binds_current()

    def network_ours(self):
        """The host's network namespace, veth and addresses are there (its /24 is this fleet's, even when
        the rest of the host has to be made again)."""
        return netns.link_ok(self.netns, self.host_if, self.gateway, self.address, "eth0")

    def binds_current(self):
        """Whether /tmp, the home and the host's folder, seen inside the host, are DIR/hosts/<name>/tmp, home
        and DIR/hosts/<name>. Namespaces outlive their folder: a checkout removed and cloned again at the same
        path finds them up, with /tmp and home bound to folders that were deleted, where nothing can be created
        any more. Raises RuntimeError when the host's mount namespace cannot be looked into at all."""
        wanted = []
        for path in (self.file("tmp"), self.file("home"), self.dir):
            try:
                info = os.stat(path)
            except OSError:
                return False
            wanted.append("%d:%d" % (info.st_dev, info.st_ino))
        proc = common.run("nsenter", "--mount=" + self.mnt, "--", STAT, "-L", "-c", "%d:%i", "--", "/tmp",
                          self.settings.home, self.dir, cwd="/")
        if proc.returncode:
            raise RuntimeError("cannot look into the mount namespace of %s (%s): %s (scripts/ensure-fleet.sh --down "
                               "removes it)" % (self.name, self.mnt, (proc.stderr or proc.stdout).strip()))
        return proc.stdout.split() == wanted

    def dockerd_pid(self):
        """The host's dockerd when it runs inside the host."""
        pid = common.pid_from(self.file("dockerd.pid"), self.file("dockerd.pid"))
        return pid if pid and self.in_host(pid) else None

    def docker_host(self, pid=None):
        """The host's engine as this machine reaches it (a DOCKER_HOST URL), or None when it is down."""
        pid = pid or self.dockerd_pid()
        return "unix:///proc/%d/root/run/docker.sock" % pid if pid else None

    def sshd_pid(self):
        """The host's sshd when it runs inside the host."""
        pid = sshd.pid(self.file("sshd.pid"), self.file("sshd_config"))
        return pid if pid and self.in_host(pid) else None

    def ssh_answers(self, timeout=1.0):
        """Whether something accepts connections on the host's ssh port."""
        try:
            with socket.create_connection((self.address, self.settings.port), timeout=timeout):
                return True
        except OSError:
            return False

    # --- bring up ------------------------------------------------------------------------------------

    def record(self):
        """What --down needs to find everything of the host, written before anything is made."""
        return {"index": self.index, "name": self.name, "netns": self.netns, "host_if": self.host_if,
                "address": self.address, "gateway": self.gateway, "nsdir": self.nsdir}

    def up(self, needed, cache_dir):
        """Make whatever of the host is missing; returns the list of what it did (empty: nothing changed)."""
        did = []
        if not self.namespaces_ok():
            if os.path.exists(self.dir) or netns.exists(self.netns) or os.path.exists(self.nsdir):
                self.destroy(keep_dir=True)
            self.make_namespaces(needed)
            did.append("namespaces")
        elif not netns.links_up(self.netns, self.host_if, "eth0"):
            netns.set_up(self.netns, self.host_if, "eth0")
            did.append("links")
        pid = self.dockerd_pid()
        if pid is None or not engine.answers(self.docker_host(pid)):
            if pid:
                engine.stop(pid, self.file("dockerd.pid"))
            self.start_dockerd()
            did.append("dockerd")
        if engine.copy_images(self.settings.images, self.docker_host(), cache_dir):
            did.append("images")
        if self.sshd_pid() is None or not self.ssh_answers() or self.sshd_config() != read(self.file("sshd_config")):
            self.start_sshd()
            did.append("sshd")
        return did

    def make_namespaces(self, needed):
        """The network namespace and veth, then the mount and UTS namespaces set up by :func:`setup_inside`."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        common.write_file(self.file("host.json"), json.dumps(self.record()) + "\n", 0o600)
        clash = self.route_clash()
        if self.gateway in common.host_addresses() or clash:
            raise RuntimeError("%s/24 is already in use on this machine (%s): set TAO_FLEET_NET to a free /16 "
                               "(e.g. 10.197)" % (self.gateway, clash or "an address of an interface"))
        netns.create(self.netns, self.host_if, self.gateway, self.address, "eth0", veth_peer=self.peer)
        home = self.file("home")
        tmp = self.file("tmp")
        os.makedirs(home, mode=0o700, exist_ok=True)
        os.makedirs(tmp, exist_ok=True)
        os.chmod(tmp, 0o1777)
        if not os.path.exists(self.file("machine-id")):
            common.write_file(self.file("machine-id"), hashlib.sha1(os.urandom(32)).hexdigest()[:32] + "\n", 0o444)
        common.write_file(self.file("hostname"), self.name + "\n", 0o644)
        binds = []
        for path in needed["interpreter"]:
            if _under(path, self.settings.home) and path != self.settings.home and os.path.isdir(path):
                inside = os.path.join(home, os.path.relpath(path, self.settings.home))
                os.makedirs(inside, exist_ok=True)
                binds.append([path, inside])
        os.makedirs(self.nsdir, mode=0o700, exist_ok=True)
        for name in (self.mnt, self.uts):
            with open(name, "a", encoding="utf-8"):
                pass
        plan = {"hostname": self.name, "home": self.settings.home, "private_home": home, "tmp": tmp,
                "machine_id": self.file("machine-id"), "etc_hostname": self.file("hostname"), "binds": binds,
                "keep": needed["keep"], "hosts_dir": self.settings.path("hosts"), "host_dir": self.dir}
        code = "import sys; sys.path.insert(0, sys.argv.pop(1)); from hosts.fleet import setup_inside; setup_inside(sys.argv[1])"
        common.must("nsenter", "--net=" + netns.path(self.netns), "unshare", "--mount=" + self.mnt, "--uts=" + self.uts,
                    "--propagation", "private", "--", sys.executable, "-I", "-c", code, os.path.dirname(HERE),
                    json.dumps(plan), cwd="/")

    def route_clash(self):
        """A route of this machine (other than the default one) that overlaps the host's /24, or None."""
        mine = ipaddress.ip_network(self.gateway + "/24", strict=False)
        for line in common.run("ip", "-4", "-o", "route", "show").stdout.splitlines():
            words = line.split()
            if not words or words[0] == "default" or ("dev" in words and words[words.index("dev") + 1:][:1] == [self.host_if]):
                continue
            try:
                network = ipaddress.ip_network(words[0], strict=False)
            except ValueError:
                continue
            if network.overlaps(mine):
                return line.strip()
        return None

    def start_dockerd(self):
        """dockerd inside the host, waited on until it answers."""
        os.makedirs(self.file("docker"), mode=0o711, exist_ok=True)
        args = ["--data-root", self.file("docker"), "--exec-root", "/run/docker", "--pidfile", self.file("dockerd.pid"),
                "-H", "unix:///run/docker.sock", "--bip", self.bip]
        engine.start(self.enter(), args, self.file("dockerd.log"),
                     lambda: self.dockerd_pid() is not None and engine.answers(self.docker_host()))

    def sshd_config(self):
        """The text of the host's sshd_config."""
        return sshd.render(self.settings.port, self.address, self.file("ssh_host_ed25519_key"), self.file("sshd.pid"),
                           self.settings.path("keys", "authorized_keys"),
                           header="# sshd of the fleet test host %s (scripts/ensure-fleet.sh)\n" % self.name,
                           extra="Subsystem sftp internal-sftp\n")

    def start_sshd(self):
        """sshd inside the host on its address (restarted when it runs), waited on until it accepts connections."""
        sshd.keygen(self.file("ssh_host_ed25519_key"), self.name)
        text = self.sshd_config()
        stale = sshd.pid(self.file("sshd.pid"), self.file("sshd_config"))
        if stale:
            sshd.stop(self.file("sshd.pid"), self.file("sshd_config"))
        sshd.start(self.settings.sshd, self.file("sshd_config"), text, self.file("sshd.pid"), self.file("sshd.log"),
                   prefix=self.enter())
        deadline = time.monotonic() + 10
        while not (self.sshd_pid() and self.ssh_answers(timeout=0.5)):
            if time.monotonic() > deadline:
                raise RuntimeError("the sshd of %s did not come up: %s" % (self.name, engine.tail(self.file("sshd.log"))))
            time.sleep(0.05)

    # --- tear down -----------------------------------------------------------------------------------

    def destroy(self, keep_dir=False):
        """Everything of the host, by pid: sshd and its sessions, dockerd, every other process still inside
        the host, the namespace files, veth and namespace, then its folder (data root, home, tmp)."""
        sshd.stop(self.file("sshd.pid"), self.file("sshd_config"))
        pid = common.pid_from(self.file("dockerd.pid"), self.file("dockerd.pid"))
        if pid:
            engine.stop(pid, self.file("dockerd.pid"))
        else:  # no pid file (its folder is gone): the dockerd running inside, so that its containers stop with it
            for found in self.pids_inside():
                if os.path.basename(common.cmdline(found).split(" ", 1)[0]) == "dockerd":
                    engine.stop(found, "dockerd")
        self.kill_inside()
        for name in (self.mnt, self.uts):
            if mounted(name):
                common.run("umount", name)
        if os.path.isdir(self.nsdir):
            for name in os.listdir(self.nsdir):
                os.unlink(os.path.join(self.nsdir, name))
            os.rmdir(self.nsdir)
        netns.delete(self.netns, self.host_if)
        for point in mount_points():
            if _under(point, self.dir):
                common.run("umount", "-l", point)
        if keep_dir:
            for name in ("docker", "home", "tmp", "sshd.pid", "dockerd.pid"):
                path = self.file(name)
                if os.path.isdir(path):
                    common.run("rm", "-rf", "--one-file-system", path)
                elif os.path.exists(path):
                    os.unlink(path)
        else:
            common.run("rm", "-rf", "--one-file-system", self.dir)

    def kill_inside(self):
        """SIGTERM, then SIGKILL, every process left in the host's mount or network namespace."""
        for sig_wait in (2.0, 1.0):
            found = self.pids_inside() + netns.pids(self.netns)
            found = sorted(set(pid for pid in found if pid != os.getpid()))
            if not found:
                return
            common.signal_pids(found, 15 if sig_wait == 2.0 else 9)
            deadline = time.monotonic() + sig_wait
            while time.monotonic() < deadline and any(common.running(pid) for pid in found):
                time.sleep(0.05)


def read(path):
    """The text of ``path`` ("" when it cannot be read)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return ""


def all_pids():
    """Every pid on this machine."""
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _unescape(text):
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)


def mount_points():
    """The mount points of this process's mount namespace."""
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return [_unescape(line.split()[4]) for line in handle if line.strip()]


def mounted(path):
    """Whether ``path`` is a mount point here."""
    return path in mount_points()


def setup_inside(plan_json):
    """Run by ``unshare`` inside a new host's fresh mount and UTS namespaces (private propagation): its hostname;
    only the mounts it needs of this machine (every other one, such as other namespaces' files, engines' layers
    and /run's, is detached); private /run, /tmp, home, /etc/machine-id and /etc/hostname."""
    plan = json.loads(plan_json)
    common.must("hostname", plan["hostname"])
    keep = plan["keep"]
    for point in sorted(set(mount_points()), key=len, reverse=True):
        if point == "/" or any(_under(point, top) for top in ("/proc", "/sys", "/dev")):
            continue
        if any(_under(path, point) for path in keep):
            continue
        common.run("umount", "-l", point)
    common.must("mount", "-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "tao-fleet-run", "/run")
    for folder in ("/run/sshd", "/run/lock"):
        os.makedirs(folder, mode=0o755, exist_ok=True)
    common.must("mount", "--bind", plan["tmp"], "/tmp")
    for source, inside in plan["binds"]:
        common.must("mount", "--bind", source, inside)
        common.must("mount", "-o", "remount,bind,ro", inside)
    common.must("mount", "--rbind", plan["private_home"], plan["home"])
    for source, inside in plan["binds"]:
        common.must("mount", "-o", "remount,bind,ro", os.path.join(plan["home"], os.path.relpath(inside, plan["private_home"])))
    # The other hosts' folders (their homes, /tmp, engines) are not this host's business: only its own stays.
    parked = "/run/.tao-fleet-host"
    os.makedirs(parked, mode=0o700)
    common.must("mount", "--rbind", plan["host_dir"], parked)
    common.must("mount", "-t", "tmpfs", "-o", "mode=0700", "tao-fleet-hosts", plan["hosts_dir"])
    own = os.path.join(plan["hosts_dir"], os.path.basename(plan["host_dir"]))
    os.makedirs(own, mode=0o700)
    common.must("mount", "--move", parked, own)
    os.rmdir(parked)
    for source, target in ((plan["machine_id"], "/etc/machine-id"), (plan["etc_hostname"], "/etc/hostname")):
        if os.path.exists(target):
            common.must("mount", "--bind", source, target)


# --- the fleet ---------------------------------------------------------------------------------------

def existing_hosts(settings):
    """Every host of this fleet that left a trace: its folder, its namespace or its namespace files."""
    found = {}
    hosts_dir = settings.path("hosts")
    if os.path.isdir(hosts_dir):
        for name in os.listdir(hosts_dir):
            try:
                with open(os.path.join(hosts_dir, name, "host.json"), encoding="utf-8") as handle:
                    record = json.load(handle)
                if record["name"] == name:
                    found[int(record["index"])] = name
            except (OSError, ValueError, KeyError, TypeError):
                continue
    prefix = "tao-fleet-%s-" % settings.tag
    for line in common.run("ip", "netns", "list").stdout.splitlines():
        word = line.split()[0] if line.split() else ""
        if word.startswith(prefix) and word[len(prefix):].isdigit():
            found.setdefault(int(word[len(prefix):]), None)
    if os.path.isdir(settings.nsroot):
        for name in os.listdir(settings.nsroot):
            if name.isdigit():
                found.setdefault(int(name), None)
    return [Host(settings, index, found[index]) for index in sorted(found)]


def write_files(settings, hosts, listed):
    """known_hosts (every host that is up), ssh_config, hosts.json and the inventory (``listed``); written only
    when their text changes. Returns the inventory's path."""
    keys = settings.path("keys")
    identity = os.path.join(keys, "id_ed25519")
    known = settings.path("known_hosts")
    lines = [sshd.known_hosts_line(host.address, settings.port, sshd.public_key(host.file("ssh_host_ed25519_key")))
             for host in hosts if host in listed or os.path.exists(host.file("ssh_host_ed25519_key.pub"))]
    common.update_file(known, "".join(lines), 0o644)
    config = "# ssh -F %s <host>: the fleet test hosts (scripts/ensure-fleet.sh)\n" % settings.path("ssh_config")
    for host in hosts:
        config += ("Host %s\n  HostName %s\n  Port %d\n  User %s\n  IdentityFile %s\n  IdentitiesOnly yes\n"
                   "  UserKnownHostsFile %s\n  StrictHostKeyChecking yes\n  ForwardAgent no\n\n"
                   % (host.name, host.address, settings.port, USER, identity, known))
    common.update_file(settings.path("ssh_config"), config, 0o644)
    common.update_file(settings.path("hosts.json"), json.dumps(
        [{"name": host.name, "address": host.address, "gateway": host.gateway, "port": settings.port, "user": USER,
          "netns": host.netns, "docker_host": host.docker_host(), "dir": host.dir} for host in hosts],
        indent=1) + "\n", 0o644)
    args = "-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes" % known
    text = "# The fleet test hosts made by scripts/ensure-fleet.sh (removed by scripts/ensure-fleet.sh --down)\n[gpu]\n"
    for host in listed:
        text += ("%s ansible_host=%s ansible_port=%d ansible_user=%s ansible_ssh_private_key_file=%s "
                 "ansible_ssh_common_args='%s' ansible_python_interpreter=%s\n"
                 % (host.name, host.address, settings.port, USER, identity, args, settings.python))
    inventory = settings.path("inventory.ini")
    common.update_file(inventory, text, 0o644)
    return inventory


def prepare(settings, interpreter):
    """The fleet's folder (0700 keys), the namespace-file folder, and what every host keeps mounted."""
    os.makedirs(settings.dir, mode=0o755, exist_ok=True)
    os.makedirs(settings.path("hosts"), mode=0o700, exist_ok=True)
    sshd.ensure_keys(settings.path("keys"), "tao-fleet-test", host_keys=())
    os.makedirs(settings.nsroot, mode=0o700, exist_ok=True)
    if not mounted(settings.nsroot):
        # Namespace files need a mount that is not shared (as `ip netns` does for /run/netns).
        common.must("mount", "--bind", settings.nsroot, settings.nsroot)
        common.must("mount", "--make-private", settings.nsroot)
    keep = ["/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/var", "/opt", "/home", settings.dir, REPO]
    keep += interpreter
    return {"interpreter": interpreter, "keep": keep}


def up(settings, count, interpreter):
    """Hosts 1..count up (hosts with higher numbers left as they are); returns the inventory path.
    ``interpreter``: :meth:`Settings.interpreter_paths`."""
    needed = prepare(settings, interpreter)
    settings.record_net()
    cache = settings.path("images")
    hosts = [Host(settings, index) for index in range(1, count + 1)]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(count, 8)) as pool:
        results = list(pool.map(lambda host: _up_one(host, needed, cache), hosts))
    common.run("rm", "-rf", cache)
    failed = [(host, result) for host, result in zip(hosts, results) if isinstance(result, Exception)]
    for host, result in zip(hosts, results):
        if not isinstance(result, Exception):
            log("%s %s: %s" % (host.name, host.address, "started " + ", ".join(result) if result else "up, unchanged"))
    if failed:
        for host, error in failed:
            log("%s: %s" % (host.name, error))
        raise RuntimeError("%d of %d test hosts did not come up (scripts/ensure-fleet.sh --down removes what was "
                           "made)" % (len(failed), count))
    others = []
    for host in existing_hosts(settings):
        if host.index <= count:
            continue
        if os.path.exists(host.file("host.json")):
            others.append(host)
        else:  # its folder is gone (a checkout removed and cloned again): nothing can log in to it any more
            try:
                host.destroy()
                log("%s: removed what was left of it without its folder" % host.name)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                log("%s: left without its folder, could not be removed (--down tries again): %s" % (host.name, exc))
    if others:
        log("also up, not in the inventory: %s (--down removes them)" % ", ".join(host.name for host in others))
    inventory = write_files(settings, hosts + others, hosts)
    log("%d host(s) ready in %.1f s" % (count, time.monotonic() - started))
    return inventory


def _up_one(host, needed, cache):
    try:
        return host.up(needed, cache)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return exc


def down(settings):
    """Every host of the fleet, by pid, and the fleet's folder."""
    hosts = existing_hosts(settings)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(len(hosts), 8))) as pool:
        list(pool.map(lambda host: host.destroy(), hosts))
    if mounted(settings.nsroot):
        common.run("umount", settings.nsroot)
    if os.path.isdir(settings.nsroot):
        common.run("rm", "-rf", "--one-file-system", settings.nsroot)
    common.run("rm", "-rf", "--one-file-system", settings.dir)
    return hosts


def _machine_lock():
    """An exclusive lock shared by every fleet on this machine, held until the process ends. In /run itself,
    where only root writes (anyone may create files in /run/lock and hold them)."""
    handle = open(os.open("/run/tao-fleet-nets.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600),
                  "w", encoding="utf-8")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def main(argv):
    """``up N`` | ``down`` | ``status`` (what scripts/ensure-fleet.sh runs)."""
    if not (argv[:1] == ["up"] and len(argv) == 2 or argv in (["down"], ["status"])):
        log("usage: ensure-fleet.sh N | --down | --status")
        return 2
    try:
        settings = Settings()
        count = None
        if argv[0] == "up":
            try:
                count = int(argv[1])
            except ValueError:
                raise ValueError("the number of hosts must be a whole number, not %r" % argv[1]) from None
            if not 1 <= count <= 250:
                raise ValueError("the number of hosts must be between 1 and 250, not %d" % count)
            if settings.dir_problem:
                raise ValueError(settings.dir_problem)
            interpreter = settings.interpreter_paths()
            # Fleets of other checkouts choose their nets too: one at a time on this machine, from the choice
            # until their namespaces hold the nets (the lock is released when this process ends).
            settings.machine_lock = _machine_lock()
            settings.choose_net(count)
            for index in range(1, count + 1):
                host = Host(settings, index)
                clash = None if host.network_ours() else host.route_clash()
                if clash:
                    raise ValueError("%s/24 of %s is already in use on this machine (%s): set TAO_FLEET_NET to a "
                                     "free /16 (e.g. 10.197)" % (host.gateway, host.name, clash))
            for image in settings.images:
                if engine.image_id(image) is None:
                    raise ValueError("this machine's Docker engine has no %s: build or load it first (`make "
                                     "emulator-image` builds the reference image)" % image)
        os.makedirs(os.path.dirname(settings.dir), exist_ok=True)
        # One run at a time per fleet; the lock sits next to the fleet's folder (--down removes both).
        with open(os.open(settings.dir + ".lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600), "w",
                  encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if argv[0] == "up":
                print(up(settings, count, interpreter))
            elif argv[0] == "down":
                gone = down(settings)
                os.unlink(settings.dir + ".lock")
                log("removed %d host(s) and %s" % (len(gone), settings.dir))
            else:
                for host in existing_hosts(settings):
                    print("%s %s namespaces=%s dockerd=%s sshd=%s"
                          % (host.name, host.address, host.namespaces_ok(), host.dockerd_pid(), host.sshd_pid()))
        return 0
    except (ValueError, RuntimeError, OSError) as exc:
        log(str(exc))
        return 1
