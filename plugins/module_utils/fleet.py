# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fleets: the controller's one view of the services of many inventory hosts, and its forwards to them.

Each host keeps its own registry; ``tao_inference_info`` on every host gives its services, and the
controller merges them (:func:`merge`) into rows of one list. A service on a host's loopback (the
default) is reached from the controller through a tracked ``ssh -N -L`` forward (the same tunnel code
as Slurm's, :mod:`ssh`), made from the inventory's connection variables (:class:`InventoryHost`) and
recorded in the controller's registry (its ``forwards``), so that a stop or a later view closes exactly
that process. A service bound to another address is reached there directly.

Everything that arrives here came from hosts or from an inventory: it is validated before it reaches an
ssh argv or a URL. ``ansible_ssh_common_args`` is split with shlex (never a shell) and only ssh options
that cannot run a command or hand the forward to another process are kept.
"""

import ipaddress
import os
import shlex
import signal
import socket
import threading
import time

from urllib.parse import urlsplit

from ansible_collections.tao.inference.plugins.module_utils import catalog, procs, readiness, ssh, trust
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.registry import port_is_free

LOCAL_SCOPE = "local"
UNREACHABLE = "unreachable"
ERROR = "error"
ELSEWHERE = "elsewhere"
# Forwards opened at once by one view (each is an ssh client setting up its connection), and at most this many
# new ones per view: a host listing thousands of services must not make the controller start thousands of ssh.
FORWARD_WORKERS = 8
MAX_NEW_FORWARDS = 256

# ssh -o options a fleet's ansible_ssh_common_args may carry (lower case, as ssh compares them). Left
# out on purpose: anything that runs a command (ProxyCommand, LocalCommand, KnownHostsCommand, Match
# exec), reads more configuration (Include), or shares or widens the connection (ControlMaster,
# ControlPath, ForwardAgent, ForwardX11, RemoteForward, DynamicForward, PermitLocalCommand...).
ALLOWED_OPTIONS = frozenset(name.lower() for name in (
    "StrictHostKeyChecking", "UserKnownHostsFile", "GlobalKnownHostsFile", "HostKeyAlias", "CheckHostIP",
    "HostKeyAlgorithms", "HashKnownHosts", "UpdateHostKeys", "VerifyHostKeyDNS", "ConnectTimeout",
    "ConnectionAttempts", "ServerAliveInterval", "ServerAliveCountMax", "TCPKeepAlive", "IdentitiesOnly",
    "IdentityFile", "CertificateFile", "PubkeyAuthentication", "PreferredAuthentications", "User", "Port",
    "ProxyJump", "AddressFamily", "Compression", "Ciphers", "MACs", "KexAlgorithms", "LogLevel",
    "PubkeyAcceptedAlgorithms", "PubkeyAcceptedKeyTypes", "IPQoS", "RekeyLimit", "BindAddress"))
_FLAGS = ("-4", "-6", "-C", "-q")
_WITH_VALUE = {"-o": "option", "-i": "key", "-p": "port", "-l": "user", "-J": "jump"}
_PATH_OPTIONS = ("userknownhostsfile", "globalknownhostsfile", "identityfile", "certificatefile")


def _refuse(word, why):
    return TaoInferenceError(
        "ansible_ssh_common_args holds %r, which %s. Only these are taken: -4, -6, -C, -q, -i KEY, -p PORT, "
        "-l USER, -J [USER@]HOST[:PORT], and -o with one of: %s" % (word, why, ", ".join(sorted(ALLOWED_OPTIONS))))


def _check_jump(value):
    """``[user@]host[:port]``, comma-separated: the hosts ProxyJump goes through."""
    for hop in value.split(","):
        rest = hop
        user, _at, rest = rest.rpartition("@")
        host, _colon, port = rest.partition(":") if not rest.startswith("[") else (rest, "", "")
        trust.check_user(user or None, "ProxyJump user")
        trust.check_host(host, "ProxyJump host")
        if port:
            trust.check_port(port, "ProxyJump port")
    return value


def _check_value(word, name, value):
    if not value or value.startswith("-") or trust.kind_problem("text", value) or "%" in value and \
            name not in _PATH_OPTIONS:
        raise _refuse(word, "has no value, or a value that starts with '-' or holds control characters")
    if name in _PATH_OPTIONS:
        if not (value.startswith("/") or value.startswith("~/") or value == "none"):
            raise _refuse(word, "names a file by a relative path (give an absolute one)")
    elif name == "proxyjump":
        _check_jump(value)
    elif name == "port":
        trust.check_port(value, "Port")
    elif name == "user":
        trust.check_user(value, "User")
    elif " " in value:
        raise _refuse(word, "holds a space")
    return value


def common_args(text):
    """The ssh argv words that ``ansible_ssh_common_args`` may add, checked one by one; refuses anything
    else with a message listing what is taken."""
    if text is None or text == "":
        return []
    if not isinstance(text, str) or trust.kind_problem("text", text):
        raise TaoInferenceError("ansible_ssh_common_args must be one line of ssh options")
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise TaoInferenceError("ansible_ssh_common_args cannot be split into words (%s)" % exc)
    argv = []
    index = 0
    while index < len(words):
        word = words[index]
        if word in _FLAGS:
            argv.append(word)
            index += 1
            continue
        flag, attached = word[:2], word[2:]
        if flag not in _WITH_VALUE or not word.startswith("-"):
            raise _refuse(word, "is not an ssh option that is taken")
        if attached:
            value = attached
            index += 1
        elif index + 1 < len(words):
            value = words[index + 1]
            index += 2
        else:
            raise _refuse(word, "has no value")
        kind = _WITH_VALUE[flag]
        if kind == "option":
            name, sep, option_value = value.partition("=")
            if not sep:
                name, _space, option_value = value.partition(" ")
            if name.lower() not in ALLOWED_OPTIONS:
                raise _refuse("-o " + value, "is not an ssh option that can be taken (it could run a command, or "
                              "share or widen the connection)")
            argv += ["-o", "%s=%s" % (name, _check_value("-o " + value, name.lower(), option_value.strip()))]
        elif kind == "key":
            argv += ["-o", "IdentityFile=%s" % _check_value(word, "identityfile", value)]
        elif kind == "port":
            argv += ["-p", str(trust.check_port(value, "ssh port in ansible_ssh_common_args"))]
        elif kind == "user":
            argv += ["-l", trust.check_user(value, "ssh user in ansible_ssh_common_args")]
        else:
            argv += ["-J", _check_jump(_check_value(word, "proxyjump", value))]
    return argv


class InventoryHost(object):
    """How the controller reaches one inventory host, from its connection variables (validated)."""

    def __init__(self, inventory_host, ansible_host=None, ansible_user=None, ansible_port=None,
                 ansible_ssh_private_key_file=None, ansible_ssh_common_args=None, ansible_connection=None):
        self.name = _check_inventory_name(inventory_host)
        self.local = ansible_connection == "local"
        self.address = trust.check_host(ansible_host or inventory_host, "ansible_host of %s" % self.name)
        self.user = trust.check_user(ansible_user or None, "ansible_user of %s" % self.name)
        self.port = trust.check_port(None if ansible_port in (None, "") else ansible_port, "ansible_port of %s" % self.name)
        key = ansible_ssh_private_key_file or None
        if key is not None and (not isinstance(key, str) or trust.kind_problem("text", key) or
                                not (key.startswith("/") or key.startswith("~/"))):
            raise TaoInferenceError("ansible_ssh_private_key_file of %s must be an absolute path (or start with "
                                    "~/)" % self.name)
        self.key = key
        self.options = common_args(ansible_ssh_common_args)

    @classmethod
    def from_dict(cls, data):
        data = dict(data or {})
        known = ("inventory_host", "ansible_host", "ansible_user", "ansible_port", "ansible_ssh_private_key_file",
                 "ansible_ssh_common_args", "ansible_connection")
        return cls(**dict((k, data.get(k)) for k in known))

    def target(self):
        key = os.path.expanduser(self.key) if self.key else None
        return ssh.SSHTarget(self.address, self.user, self.port, key, what="ansible_host of %s" % self.name,
                             options=self.options)


def _check_inventory_name(value):
    if not isinstance(value, str) or not 0 < len(value) <= 255 or trust.kind_problem("text", value):
        raise TaoInferenceError("inventory host %r is not an inventory host name" % (value,))
    return value


# -- one view ------------------------------------------------------------------------------------
def _url_parts(url):
    parts = urlsplit(url)
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _text(value):
    """``value`` when it is text without control characters, else None (a field shown as it came)."""
    return value if isinstance(value, str) and not trust.kind_problem("text", value) else None


def _row(host, item):
    """One service of ``host`` (a tao_inference_info item: checked, it came from the host) as a row."""
    job_id = trust.check_job_id(item.get("job_id"), "job_id of a service of %s" % host)
    arch = item.get("network_arch")
    if arch not in catalog.NETWORK_ARCHS:
        raise TaoInferenceError("service %s of %s has an unknown network_arch" % (job_id, host))
    url = item.get("host_url")
    if url is not None:
        trust.check_http_url(url, "host_url of service %s of %s" % (job_id, host))
    status = item.get("platform_status") if isinstance(item.get("platform_status"), dict) else {}
    probe = item.get("readiness") if isinstance(item.get("readiness"), dict) else {}
    name = item.get("name")
    if name is not None and not (isinstance(name, str) and trust.SERVICE_NAME.fullmatch(name)):
        raise TaoInferenceError("service %s of %s has a bad name" % (job_id, host))
    shape = item.get("shape") if isinstance(item.get("shape"), dict) else {}
    bind = _text((shape.get("platform_options") or {}).get("bind_address") if isinstance(
        shape.get("platform_options"), dict) else None)
    if bind is not None:  # an address or a host name (Brev's brev_bind_address may be one)
        try:
            trust.check_host(bind, "bind_address")
        except TaoInferenceError:
            raise TaoInferenceError("service %s of %s has a bind_address that is not a host name or address"
                                    % (job_id, host))
    auth = item.get("endpoint_auth")
    problem = None if auth is None else readiness.endpoint_auth_problem(auth)
    if problem:
        raise TaoInferenceError("service %s of %s has an endpoint_auth that %s" % (job_id, host, problem))
    return {
        "host": host, "machine": _text(item.get("machine")), "job_id": job_id, "name": name,
        "network_arch": arch, "platform": _text(item.get("platform")),
        "state": _text(status.get("state")) or "unknown", "ready": item.get("ready") is True,
        "readiness": _text(probe.get("reason")), "host_url": url, "controller_url": None,
        "started_at": _text(item.get("started_at")), "bind_address": bind,
        "endpoint_auth": dict(auth) if auth else None, "forwarded": False,
    }


def _host_row(host, state, reason, job_id=None):
    """A row that stands for a host (or a job_id) the view cannot use: unreachable, or an error and why."""
    return {"host": host, "machine": None, "job_id": job_id, "name": None, "network_arch": None, "platform": None,
            "state": state, "ready": False, "readiness": " ".join(reason.split())[:300], "host_url": None,
            "controller_url": None, "started_at": None, "bind_address": None, "endpoint_auth": None,
            "forwarded": False}


def merge(hosts):
    """``hosts``: one dict per inventory host (``inventory_host``, ``reachable``, ``error``, ``services``:
    its tao_inference_info items). Returns ``(rows, unreachable)``: one row per service (a service a shared
    registry shows on several hosts once, from the machine that runs it) and one row per host that could
    not be asked (``state: unreachable``).

    What hosts publish is not trusted: a host that lists a service the checks refuse is one ``error`` row
    (none of its services is used, the other hosts' are), and a job_id that two machines both claim to run
    is one ``error`` row naming both (a request is never routed to either)."""
    rows, unreachable, seen, reached_at = [], [], {}, {}
    for data in hosts:
        host = _check_inventory_name((data or {}).get("inventory_host"))
        if host in reached_at:
            raise TaoInferenceError("inventory host %s is given twice: give each host once" % host)
        connection = data.get("connection") if isinstance(data.get("connection"), dict) else {}
        reached_at[host] = "local" if connection.get("ansible_connection") == "local" else \
            str(connection.get("ansible_host") or host)
        if not data.get("reachable", True) or data.get("error"):
            # A host that could not be reached, or whose registry could not be read (state "error").
            reason = data.get("error") if isinstance(data.get("error"), str) else "the host could not be reached"
            state = ERROR if data.get("reachable", True) else UNREACHABLE
            if state == UNREACHABLE:
                unreachable.append(host)
            rows.append(_host_row(host, state, reason))
            continue
        try:
            mine = [_row(host, item if isinstance(item, dict) else {}) for item in data.get("services") or []]
        except TaoInferenceError as exc:
            rows.append(_host_row(host, ERROR, "its registry lists a service that cannot be used (%s); none of its "
                                               "services is listed: fix or prune the entry there" % exc.msg))
            continue
        for row in mine:
            other = seen.get(row["job_id"])
            if other is None:
                seen[row["job_id"]] = row
                rows.append(row)
            elif other["state"] == ELSEWHERE and row["state"] != ELSEWHERE:
                rows[rows.index(other)] = row
                seen[row["job_id"]] = row
            elif ELSEWHERE not in (row["state"], other["state"]) and other["state"] != ERROR and \
                    (row["machine"] != other["machine"] or reached_at[host] != reached_at[other["host"]]):
                # Two machines run the same service: one of them is lying (or a registry was copied). The same
                # machine is reached at one address (inventory aliases); a host naming another's machine is not.
                conflict = _host_row(other["host"], ERROR, "service %s is listed as its own by %s (machine %s) and "
                                     "by %s (machine %s): neither is used until one entry is removed"
                                     % (row["job_id"], other["host"], other["machine"], host, row["machine"]),
                                     job_id=row["job_id"])
                rows[rows.index(other)] = conflict
                seen[row["job_id"]] = conflict
    return rows, unreachable


class Resolver(object):
    """Where names lead from this machine, each asked once, within ``budget`` seconds in all: a name that
    does not answer in time counts as leading here (it is then reached through the forward, never directly)."""

    PER_NAME = 2.0

    def __init__(self, budget=5.0):
        self.deadline = time.monotonic() + budget
        self.cache = {}

    def addresses(self, name):
        """The addresses ``name`` resolves to ([] when it does not), or None when it did not answer in time."""
        if name not in self.cache:
            remaining = min(self.PER_NAME, self.deadline - time.monotonic())
            answer = {}
            if remaining > 0:
                # A thread of its own, left behind if the resolver never answers: getaddrinfo has no timeout.
                worker = threading.Thread(target=lambda: answer.update(found=_resolved(name)))
                worker.daemon = True
                worker.start()
                worker.join(remaining)
            self.cache[name] = answer.get("found")
        return self.cache[name]


def _resolved(name):
    """The addresses ``name`` resolves to on this machine (none when it does not resolve)."""
    try:
        infos = socket.getaddrinfo(name, None, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        return []
    found = []
    for info in infos:
        try:
            found.append(ipaddress.ip_address(info[4][0].split("%", 1)[0]))
        except ValueError:
            continue
    return found


def _mine(address):
    """True when ``address`` is one of this machine's own (a socket can be bound to it)."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(address), 0))
        return True
    except OSError:
        return False


def _points_here(host, resolver=None):
    """True when connecting to ``host`` from the controller reaches the controller itself: a loopback or
    unspecified address in any spelling the resolver takes (``0``, ``127.1``, ``2130706433``, ``[::]``,
    ``[::ffff:127.0.0.1]``), a name under ``localhost``, an address of this machine's own, or a name that
    leads to one of those (or does not answer in time)."""
    name = (host or "").strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost") or trust.is_loopback(name):
        return True
    try:
        addresses = [ipaddress.ip_address(name if ":" in name else socket.inet_aton(name))]
    except (OSError, ValueError):
        # A name (a load balancer, a platform's endpoint...): where it leads from here decides, so that a name a
        # host chose cannot point the controller at itself.
        addresses = (resolver or Resolver()).addresses(name)
        if addresses is None:
            return True
    for address in addresses:
        address = getattr(address, "ipv4_mapped", None) or address
        if address.is_loopback or address.is_unspecified or _mine(address):
            return True
    return False


def direct_url(row, inventory_host, resolver=None):
    """The URL the controller reaches ``row``'s service at without a forward, or None when it needs one."""
    if not row.get("host_url"):
        return None
    resolver = resolver or Resolver()
    host, port = _url_parts(row["host_url"])
    if not _points_here(host, resolver):
        return row["host_url"]  # a platform's own address (a load balancer, a Lepton endpoint...)
    if inventory_host.local:
        return row["host_url"]  # the host is the controller itself
    bind = row.get("bind_address")
    if bind and (bind in ("0.0.0.0", "::") or not _points_here(bind, resolver)):
        address = inventory_host.address if bind in ("0.0.0.0", "::") else bind
        if ":" in address:
            address = "[%s]" % address.strip("[]")
        return "http://%s:%d" % (address, port)
    return None


# -- forwards on the controller -------------------------------------------------------------------
def _spec(record):
    return ssh.forward_spec(record["local_port"], record["remote_host"], record["remote_port"])


def forward_alive(record):
    return bool(record.get("pid")) and ssh.tunnel_alive(record["pid"], record.get("start_time"), _spec(record))


def close_forward(record):
    """Stop exactly the forward process ``record`` names; True when it ran. A reservation without a pid whose
    run is gone (killed while its ssh came up) has its ssh found by its exact ``-L`` (the reserved local port
    was that run's alone) and stopped, so no forward outlives its record untracked."""
    if record.get("pid"):
        return ssh.close_tunnel(record["pid"], record.get("start_time"), _spec(record))
    if record.get("owner_pid") and procs.alive(record["owner_pid"], record.get("owner_start_time")):
        return False  # being opened right now by a live run: its own to finish or undo
    stopped = False
    if record.get("local_port") and record.get("remote_port"):
        spec = _spec(record)
        for pid, started, found in ssh.find_tunnels(record.get("remote_host") or "127.0.0.1", record["remote_port"]):
            if found == spec:
                stopped = ssh.close_tunnel(pid, started, spec) or stopped
    return stopped


def _same_route(record, row, inventory_host):
    _host, port = _url_parts(row["host_url"])
    return record.get("remote_port") == port and record.get("ssh_host") == inventory_host.address and \
        record.get("ssh_port") == inventory_host.port and record.get("ssh_user") == inventory_host.user


def ensure_forward(registry, row, inventory_host, opener=ssh.open_tunnel, is_free=port_is_free):
    """A live forward from this machine's loopback to ``row``'s service on ``inventory_host``; returns
    ``(controller_url, opened)``. A live recorded one is kept; a dead or stale one is closed and
    replaced. The port is reserved in the registry first, the forward opened outside the lock (so many
    hosts' forwards open at once), then recorded with its pid; a failure drops the reservation."""
    job_id = row["job_id"]
    _host, remote_port = _url_parts(row["host_url"])
    me = procs.this_process()
    with registry.transaction() as state:
        record = state.forwards().get(job_id)
        if record is not None and _same_route(record, row, inventory_host) and forward_alive(record):
            return "http://127.0.0.1:%d" % record["local_port"], False
        if record is not None and not record.get("pid") and record.get("owner_pid") and \
                procs.alive(record["owner_pid"], record.get("owner_start_time")):
            raise TaoInferenceError("another run (pid %s) is opening the forward to service %s right now; run again "
                                    "once it is done" % (record["owner_pid"], job_id), job_id=job_id)
        if record is not None:
            close_forward(record)
            state.remove_forward(job_id)
        local_port = state.allocate_port(LOCAL_SCOPE, is_free=is_free)
        record = {"inventory_host": inventory_host.name, "local_port": local_port, "remote_host": "127.0.0.1",
                  "remote_port": remote_port, "ssh_host": inventory_host.address, "ssh_user": inventory_host.user,
                  "ssh_port": inventory_host.port, "owner_pid": me["pid"], "owner_start_time": me["start_time"]}
        state.put_forward(job_id, _reservation(record))  # no pid yet: the port is held while ssh starts
    try:
        pid, started = opener(inventory_host.target(), local_port, "127.0.0.1", remote_port)
    except BaseException:
        with registry.transaction() as state:
            if not (state.forwards().get(job_id) or {}).get("pid"):
                state.remove_forward(job_id)
        raise
    record.update(pid=pid, start_time=str(started))
    try:
        with registry.transaction() as state:
            current = state.forwards().get(job_id) or {}
            if current.get("owner_pid") != me["pid"] or current.get("pid"):
                raise TaoInferenceError("the forward to service %s was replaced by another run while it opened; run "
                                        "again" % job_id, job_id=job_id)
            state.put_forward(job_id, _reservation(record))
    except BaseException:
        ssh.close_tunnel(pid, started, ssh.forward_spec(local_port, "127.0.0.1", remote_port))
        raise
    return "http://127.0.0.1:%d" % local_port, True


def _reservation(record):
    return dict((k, v) for k, v in record.items() if v is not None)


def close_forwards(registry, job_ids, inventory_host=None):
    """Close the controller forwards of ``job_ids`` (only those to ``inventory_host`` when given: a host
    reports what it stopped, and must not close forwards to another host) and drop their records; the
    job_ids closed or dropped."""
    closed = []
    with registry.transaction() as state:
        forwards = state.forwards()
        for job_id in job_ids:
            record = forwards.get(job_id)
            if record is None or (inventory_host is not None and record["inventory_host"] != inventory_host):
                continue
            close_forward(record)
            state.remove_forward(job_id)
            closed.append(job_id)
    return closed


def _open_one(registry, row, where, opener):
    """:func:`ensure_forward` for one row: ``(controller_url, opened, error message or None)``."""
    try:
        url, made = ensure_forward(registry, row, where, opener)
    except TaoInferenceError as exc:
        return None, False, exc.msg
    return url, made, None


def _open_all(registry, to_open, opener):
    """:func:`_open_one` for every ``(row, where)`` at once, FORWARD_WORKERS at a time (each its own ssh;
    ensure_forward holds the registry lock only around its records). Interrupted (a signal, see
    procs.interruptible), the forwards not begun are dropped and those under way finish and are recorded
    before the interruption goes on: none is left untracked."""
    if not to_open:
        return []
    outcomes, failures = [None] * len(to_open), []
    pending, taking, stop = list(range(len(to_open))), threading.Lock(), threading.Event()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, [])  # only reads this thread's mask

    def work():
        # A worker starts with the signals blocked (below); its ssh children must not inherit that, or a
        # SIGTERM would never stop them.
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        while not stop.is_set():
            with taking:
                if not pending:
                    return
                index = pending.pop(0)
            try:
                outcomes[index] = _open_one(registry, to_open[index][0], to_open[index][1], opener)
            except BaseException as exc:  # pylint: disable=broad-except
                failures.append(exc)
                stop.set()

    workers = [threading.Thread(target=work) for _dummy in range(min(len(to_open), FORWARD_WORKERS))]
    try:
        # This thread takes signals only once every worker has started: one that cut a start short would leave a
        # worker that no one waits for. (A signal then raises here, after the mask is back: stop ends the work.)
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, procs.CATCHABLE)
            for worker in workers:
                worker.daemon = True
                worker.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        for worker in workers:
            worker.join()
    except BaseException:
        stop.set()
        raise
    finally:
        for worker in workers:
            if worker.ident is not None:
                worker.join()
    if failures:
        raise failures[0]
    return outcomes


def view(registry, hosts, forward=True, check_mode=False, opener=ssh.open_tunnel, missing=(), close_stale=True):
    """The merged view of ``hosts`` with each service's ``controller_url``: direct, or through a
    forward this opens when ``forward`` (and check mode does not stop it). ``missing``: hosts of the play
    that published nothing (they failed or were unreachable earlier), listed as unreachable. With
    ``close_stale``, forwards of services that a reachable host no longer runs are closed (``hosts`` then
    hold every service of those hosts). Returns the module result."""
    hosts = list(hosts) + [{"inventory_host": name, "reachable": False,
                            "error": "failed or unreachable earlier in the play"} for name in missing]
    rows, unreachable = merge(hosts)
    refused = set(r["host"] for r in rows if r["state"] == ERROR and r["job_id"] is None)
    connections, errors = {}, []
    for data in hosts:
        # A host whose registry could not be read, or listed what merge refused (error), lists nothing: its
        # forwards are neither used nor closed.
        if data.get("reachable", True) and not data.get("error") and data.get("inventory_host") not in refused:
            name = _check_inventory_name(data.get("inventory_host"))
            try:
                connections[name] = InventoryHost.from_dict(dict(data.get("connection") or {}, inventory_host=name))
            except TaoInferenceError as exc:  # this host's services are listed, with no URL from here
                connections[name] = None
                errors.append({"host": name, "job_id": None, "error": exc.msg})
    # A host's own "forward" (the role passes each host's inference_service_controller_forward) beats the module's.
    forwards_of = dict((data.get("inventory_host"), forward if data.get("forward") is None else bool(data["forward"]))
                       for data in hosts)
    opened, to_open = [], []
    records = registry.read().forwards()
    resolver = Resolver()
    for row in rows:
        if row["state"] in (UNREACHABLE, ERROR, ELSEWHERE) or not row["host_url"]:
            continue
        where = connections[row["host"]]
        if where is None:
            continue
        row["controller_url"] = direct_url(row, where, resolver)
        if row["controller_url"] or row["state"] != "running":
            continue
        record = records.get(row["job_id"])
        wanted = forwards_of.get(row["host"], True)
        if record is not None and _same_route(record, row, where) and forward_alive(record):
            row["controller_url"] = "http://127.0.0.1:%d" % record["local_port"]
            row["forwarded"] = True
        elif wanted and not check_mode and len(to_open) >= MAX_NEW_FORWARDS:
            errors.append({"host": row["host"], "job_id": row["job_id"],
                           "error": "not forwarded: one run opens at most %d forwards; run again for the rest, or bind "
                                    "the services to an address the controller reaches" % MAX_NEW_FORWARDS})
        elif wanted and not check_mode:
            to_open.append((row, where))
        elif wanted:
            opened.append(row["job_id"])  # check mode: would open it
    outcomes = _open_all(registry, to_open, opener)
    for (row, _where), (url, made, error) in zip(to_open, outcomes):
        if error is not None:
            errors.append({"host": row["host"], "job_id": row["job_id"], "error": error})
            continue
        row["controller_url"] = url
        row["forwarded"] = True
        if made:
            opened.append(row["job_id"])
    # A forward whose service a reachable host no longer lists (stopped, pruned) is closed.
    listed = set(r["job_id"] for r in rows if r["job_id"])
    stale = [job_id for job_id, record in records.items()
             if close_stale and connections.get(record["inventory_host"]) and job_id not in listed]
    closed = stale if check_mode else close_forwards(registry, stale)
    for row in rows:
        row.pop("bind_address", None)
    # Not "unreachable": Ansible would take a true value of that key for this task's host being unreachable.
    return {"changed": bool(opened or closed), "services": rows, "unreachable_hosts": unreachable,
            "opened": opened, "closed": closed, "errors": errors, "table": table(rows)}


def table(rows):
    """The view as lines of text: a header, then one line per row (what the status playbook prints)."""
    layout = "%-14s %-36s %-16s %-18s %-11s %-5s %s"
    lines = [layout % ("HOST", "JOB_ID", "NAME", "ARCH", "STATE", "READY", "CONTROLLER_URL")]
    for row in rows:
        if row["state"] in (UNREACHABLE, ERROR):
            lines.append(layout % (row["host"], row.get("job_id") or "-", "-", "-", row["state"], "-",
                                   row.get("readiness") or ""))
            continue
        lines.append(layout % (row["host"], row["job_id"], row.get("name") or "-", row["network_arch"], row["state"],
                               "yes" if row.get("ready") else "no", row.get("controller_url") or "-"))
    return lines


# -- requests across the view ---------------------------------------------------------------------
def _candidates_text(rows):
    return "; ".join("%s on %s (arch %s, name %s, %s)" % (r["job_id"], r["host"], r["network_arch"], r.get("name"),
                                                          r.get("state")) for r in rows) or "none"


def checked_view(rows):
    """The view rows a request module was given (facts: untrusted), checked; unreachable rows dropped."""
    if not isinstance(rows, list):
        raise TaoInferenceError("fleet must be the list of services tao_inference_fleet returns")
    checked = []
    for row in rows:
        if not isinstance(row, dict):
            raise TaoInferenceError("fleet holds something that is not a service row")
        if row.get("state") in (UNREACHABLE, ERROR) or not row.get("job_id"):
            continue
        host = _check_inventory_name(row.get("host"))
        trust.check_job_id(row.get("job_id"), "job_id of a fleet service of %s" % host)
        if row.get("network_arch") not in catalog.NETWORK_ARCHS:
            raise TaoInferenceError("fleet service %s has an unknown network_arch" % row["job_id"])
        for field in ("controller_url", "host_url"):
            if row.get(field) is not None:
                trust.check_http_url(row[field], "%s of fleet service %s" % (field, row["job_id"]))
        if row.get("endpoint_auth") is not None:
            problem = readiness.endpoint_auth_problem(row["endpoint_auth"])
            if problem:
                raise TaoInferenceError("fleet service %s has an endpoint_auth that %s" % (row["job_id"], problem))
        checked.append(dict(row))
    return checked


def endpoint_headers(row, environ):
    """The headers requests to ``row``'s service carry: ``{}`` when its endpoint takes no token, else its
    token from this run's ``environ`` (as for a service of this host, see readiness.endpoint_headers), sent
    only to the URL the row's binding proves the token was given to, and only when the controller reaches
    the service there (not through a forward, whose far end the binding says nothing of)."""
    auth = row.get("endpoint_auth")
    if not auth:
        return {}
    if row.get("controller_url") != row.get("host_url"):
        raise TaoInferenceError(
            "service %s on %s takes the token it was started with at %s, but the controller reaches it at %s; "
            "the token goes only to the URL it is bound to, so nothing is sent"
            % (row["job_id"], row["host"], row.get("host_url"), row.get("controller_url")), job_id=row["job_id"])
    if row.get("forwarded") is not False:
        why = ("the controller reaches it through a forward" if row.get("forwarded") is True else
               "its row does not say it is reached without a forward (a view from an older tao_inference_fleet, or "
               "made by hand: build it again)")
        raise TaoInferenceError(
            "service %s on %s takes a token, and %s; the token goes only to the URL it is bound to, never through a "
            "forward, so nothing is sent" % (row["job_id"], row["host"], why), job_id=row["job_id"])
    return readiness.endpoint_headers(dict((key, row.get(key)) for key in (
        "job_id", "host_url", "platform", "endpoint_auth")), environ, what="fleet row")


def _servable(row):
    return row.get("controller_url") and row.get("state") == "running"


def pick(rows, job_id=None, name=None, network_arch=None):
    """The one service of the view a request goes to: by job_id, else name, else arch, else the only one.
    Several matches (a name or an arch on several hosts) fail, listing every candidate with its host."""
    if job_id:
        matches = [r for r in rows if r["job_id"] == job_id]
        what = "job_id %s" % job_id
    elif name:
        matches = [r for r in rows if r.get("name") == name]
        what = "name %s" % name
    elif network_arch:
        matches = [r for r in rows if r["network_arch"] == network_arch]
        what = "arch %s" % network_arch
    else:
        matches, what = list(rows), "any service"
    if network_arch and (job_id or name):
        matches = [r for r in matches if r["network_arch"] == network_arch]
    if not matches:
        raise TaoInferenceError("no service of the fleet matches %s; the fleet runs: %s" % (what, _candidates_text(rows)),
                                candidates=rows)
    if len(matches) > 1:
        raise TaoInferenceError("%d services of the fleet match %s; choose one with job_id: %s"
                                % (len(matches), what, _candidates_text(matches)), candidates=matches)
    return _reachable(matches[0])


def _reachable(row):
    if not _servable(row):
        raise TaoInferenceError(
            "service %s on %s cannot take requests from here (state %s, controller_url %s); run the status "
            "playbook (or the registry_facts role) to refresh the view and its forwards"
            % (row["job_id"], row["host"], row.get("state"), row.get("controller_url")), job_id=row["job_id"])
    return row


def spread_targets(rows, network_arch, name=None):
    """Every service of ``network_arch`` (and ``name``) in the view that can take requests; fails when none."""
    matches = [r for r in rows if r["network_arch"] == network_arch and (name is None or r.get("name") == name)]
    servable = [r for r in matches if _servable(r)]
    if not servable:
        raise TaoInferenceError("no %s service of the fleet can take requests; the fleet runs: %s"
                                % (network_arch, _candidates_text(rows)), candidates=rows)
    return servable
