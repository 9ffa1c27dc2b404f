# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Start, stop and inspect services: registry + driver + readiness.

It makes ``state: present`` idempotent by name (the spec fingerprint kept in
the registry entry; platform objects carry it in a label for people, and
``absent`` by name also finds objects the registry lost by their name label),
reserves host ports under the registry lock, and leaves nothing behind when
a start fails: the container is removed and the reservation dropped. It knows
no platform: it asks drivers only what platforms/base.py defines (host ports,
``PlatformStatus.broken`` for a forward that is down, facts to report).
"""

import collections
import copy
import os
import socket
import time
import datetime
import uuid

from urllib.parse import urlsplit

from ansible_collections.tao.inference.plugins.module_utils import catalog, procs, readiness, trust
from ansible_collections.tao.inference.plugins.module_utils.platforms import drivers as platforms
from ansible_collections.tao.inference.plugins.module_utils.chat import routing
from ansible_collections.tao.inference.plugins.module_utils.command import container_env, inner_command
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.platforms.base import LABEL_PREFIX, Launch, PortTaken, mask
from ansible_collections.tao.inference.plugins.module_utils.registry import STARTED, STARTING, is_this_machine, \
    this_machine
LOG_LINES = 40
_PORT_RETRIES = 5


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def mask_probe(probe, secrets):
    """A probe as a result dict, any secret value the server echoed masked."""
    if probe is None:
        return None
    result = probe.as_dict()
    result["message"] = mask(result["message"], secrets)
    return result


def _why(exc, secrets):
    """What went wrong, in one line a user can read (a signal, an error of ours, or something else)."""
    if isinstance(exc, procs.Interrupted):
        return "the start was interrupted (%s)" % exc.name
    if isinstance(exc, KeyboardInterrupt):
        return "the start was interrupted (SIGINT)"
    if isinstance(exc, TaoInferenceError):
        return mask(exc.msg, secrets).rstrip(".")
    return "the start failed (%s)" % type(exc).__name__


def _changes(before, after):
    """Which fields of the service's shape differ between the entry it replaces and the new one
    (``[]`` when nothing is replaced)."""
    if not before:
        return []
    if before.get("orphan") or "shape" not in before:
        return ["(unknown: the service replaced has no recorded shape)"]
    old, new = before["shape"], after["shape"]
    fields = []
    for key in sorted(set(old) | set(new)):
        if key == "platform_options" and isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            fields += ["platform_options.%s" % k for k in sorted(set(old[key]) | set(new[key]))
                       if old[key].get(k) != new[key].get(k)]
        elif old.get(key) != new.get(key):
            fields.append(key)
    return fields or ["(nothing in the spec: the service it replaces had failed or was not running)"]


def watched_state(item):
    """What a watch compares, of an info ``item``: the readiness reason, else the platform's state with the
    reason it keeps the service waiting when it gives one (``pending (Resources)``)."""
    status = item.get("platform_status") or {}
    reason = (item.get("readiness") or {}).get("reason")
    if reason:
        return reason
    return "%s (%s)" % (status.get("state"), status["reason"]) if status.get("reason") else status.get("state")


def public_entry(entry):
    """The entry as modules return it (it never holds secret values)."""
    if not entry:
        return {}
    result = copy.deepcopy(entry)
    if result.get("host_url"):
        result["chat_url"] = catalog.chat_url_of(result)
    # Reached from another machine as it is when it is no loopback URL; else the controller's own forward
    # (tao_inference_fleet) gives it.
    host = urlsplit(result.get("host_url") or "").hostname
    result["controller_url"] = result["host_url"] if host and not trust.is_loopback(host) else None
    return result


def connection_of(cls, options):
    """Where a new service of driver class ``cls`` runs, from this run's platform options."""
    return dict((key, options.get(option)) for key, option in cls.CONNECTION.items())


def trusted_connection(entry, cls, options):
    """How to reach ``entry``'s service: the hosts, users and ports its registry entry recorded (validated
    data), but local files (an ssh config, a key) only as this run's options name them: a registry
    file must not be able to pick a config whose ProxyCommand would then run as the caller."""
    passed = connection_of(cls, options)
    connection = dict(passed)
    for key, value in ((entry or {}).get("connection") or {}).items():
        if key not in cls.FILE_CONNECTION:
            if value is not None:  # where the service runs, as recorded when it started
                connection[key] = value
        elif value and _local_file(passed.get(key)) != _local_file(value):
            option = cls.CONNECTION[key]
            raise TaoInferenceError(
                "service %s was started with %s %s; pass the same %s to reach it (a registry entry never "
                "chooses an ssh configuration or key by itself)" % (entry["job_id"], option, value, option))
    return connection


def _local_file(path):
    """A local file option as it is compared (``~`` expanded, absolute); other values as they are."""
    return os.path.abspath(os.path.expanduser(path)) if isinstance(path, str) and path else path


def make_driver(platform, connection, options):
    return platforms.driver_class(platform).from_options(connection, options)


class ServiceManager(object):
    """Operations behind the modules."""

    def __init__(self, registry, environ, options=None, driver_factory=make_driver, inventory_host=None):
        """``options``: this run's platform options (see platforms.argument_spec), built once;
        ``inventory_host``: the inventory name of the host this runs for, recorded in new entries."""
        self.registry = registry
        self.inventory_host = inventory_host
        self.environ = environ
        self.secrets = {}  # name -> value of secrets given as module options (no_log), beside secret_env names
        self.options = options or {}
        self._factory = driver_factory
        self._drivers = {}
        self.check_mode = registry.check_mode

    def close(self):
        """Close what the drivers hold open (engine connections, ssh processes)."""
        for driver in self._drivers.values():
            driver.close()

    def driver(self, platform, entry=None):
        """The driver for ``platform``, connected as ``entry`` records (else as the options say)."""
        cls = platforms.driver_class(platform)
        connection = trusted_connection(entry, cls, self.options) if entry and not entry.get("orphan") \
            else connection_of(cls, self.options)
        key = (platform, tuple(sorted((k, str(v)) for k, v in connection.items())))
        if key not in self._drivers:
            self._drivers[key] = self._factory(platform, connection, self.options)
        return self._drivers[key]

    # -- present -------------------------------------------------------------
    def present(self, spec, wait=True, wait_timeout=900, wait_sleep=0.5):
        driver = self.driver(spec.platform)
        fingerprint = spec.fingerprint()
        replace = []
        if spec.name:
            # Only this machine's: a shared registry's same-named services on other machines are theirs.
            current = [e for e in self.registry.read().find_name(spec.name) if is_this_machine(e)]
            self._refuse_concurrent_start(current)
            keep, status = self._reusable(current, fingerprint)
            if keep is not None:
                probe = self._probe(keep)
                if not probe.fatal:
                    return self._keep(self.driver(keep["platform"], keep), keep, status, probe, wait, wait_timeout,
                                      wait_sleep)
            replace = current + self._orphans(driver, spec.name, current)
        before = replace[0] if replace else {}
        if self.check_mode:
            after = self._entry(spec, "(new job_id)", fingerprint)
            return {"changed": True, "service": public_entry(after), "diff": {"before": before, "after": after},
                    "recreated_because": _changes(before, after)}

        driver.preflight(spec, report=False)
        pulled = driver.prepare(spec)  # what the image pull did, when the platform pulls here
        for old in replace:
            self._stop_one(self.driver(old["platform"], old), old)
        job_id = str(uuid.uuid4())
        plain, secret = container_env(spec, job_id, self._secret_source())
        entry = self._entry(spec, job_id, fingerprint)
        entry["connection"] = driver.recorded_connection(entry["connection"])
        with procs.interruptible() as guard:
            try:
                result = self._start(driver, spec, entry, before, plain, secret, wait, wait_timeout, wait_sleep)
                if pulled:
                    result["pull"] = pulled
                return result
            except BaseException as exc:  # a failure, a signal, or Ctrl-C: remove what was made
                guard.hold()  # a signal now must not cut the cleanup short
                self._abandon(driver, entry, exc, secret)
                raise

    def _start(self, driver, spec, entry, before, plain, secret, wait, wait_timeout, wait_sleep):
        """Reserve, start, record and wait; the caller cleans up if anything here fails."""
        deadline = readiness.Deadline(wait_timeout)
        self._reserve(driver, spec, entry)

        def on_submitted(fields):
            # The platform took the job: record its id at once, so nothing is lost
            # if this run dies before the service is up.
            entry.update(fields)
            with self.registry.transaction() as state:
                state.update(entry["job_id"], **fields)

        launch = Launch(spec, entry["job_id"], inner_command(spec, entry["job_id"]), plain, secret,
                        entry.get("host_port"), self._labels(spec, entry["job_id"], entry["fingerprint"]),
                        timeout=deadline.remaining(), on_submitted=on_submitted)
        entry.update(self._start_with_port_retry(driver, spec, launch, entry))
        entry["status"] = STARTED
        entry.pop("owner", None)
        with self.registry.transaction() as state:
            state.put(entry)
        result = {"changed": True, "service": public_entry(entry), "diff": {"before": before, "after": entry},
                  "recreated_because": _changes(before, entry)}
        if wait:
            # One deadline: the time the platform took to run the job counts against wait_timeout.
            result["readiness"] = self._wait(driver, entry, secret, deadline.remaining(), wait_sleep)
        return result

    def _abandon(self, driver, entry, exc, secrets):
        """A start failed or was interrupted: stop what it made and drop its entry. If the platform
        cannot confirm the stop, the entry stays (with ``stop_error``): its platform id is never lost."""
        made = bool(entry.get("platform_job_id") or entry.get("host_url"))
        try:
            stopped = driver.stop(entry)
        except Exception as stop_exc:  # pylint: disable=broad-except
            # Whatever the platform answered, its job id must not be lost with the entry.
            if not isinstance(stop_exc, TaoInferenceError):
                stop_exc = TaoInferenceError("the platform gave an answer that could not be read (%s)"
                                             % type(stop_exc).__name__)
            self._mark_stop_error(entry, mask(stop_exc.msg, secrets))
            raise TaoInferenceError(
                "%s; then stopping it failed too: %s. The registry keeps service %s so that `state: absent` "
                "with job_id %s can stop it" % (_why(exc, secrets), mask(stop_exc.msg, secrets), entry["job_id"],
                                                entry["job_id"]), job_id=entry["job_id"]) from None
        self._forget(entry["job_id"])
        if isinstance(exc, procs.Interrupted) or isinstance(exc, KeyboardInterrupt):
            raise TaoInferenceError(
                "the start of service %s was interrupted (%s)%s; nothing of it is left running or in the "
                "registry" % (entry["job_id"], exc.name if isinstance(exc, procs.Interrupted) else "SIGINT",
                              ", and what it had started was stopped" if (stopped or made) else ""),
                job_id=entry["job_id"], interrupted=True) from None
        if isinstance(exc, TaoInferenceError):
            exc.msg = mask(exc.msg, secrets)  # a platform's own message may echo what it was given
            if (stopped or made) and "It was stopped" not in exc.msg:
                exc.msg += " It was stopped and removed from the registry."
            exc.args = (exc.msg,)

    def _mark_stop_error(self, entry, message):
        try:
            with self.registry.transaction() as state:
                if state.get(entry["job_id"]) is not None:
                    fields = dict((k, v) for k, v in entry.items() if k in ("platform_job_id",))
                    state.update(entry["job_id"], stop_error=trust.check_text(
                        " ".join(message.split())[:500], "message"), **fields)
        except TaoInferenceError:
            pass  # the registry itself failed: the error message names the job

    def _refuse_concurrent_start(self, current):
        for entry in current:
            if entry.get("status") == STARTING and procs.owner_alive(entry.get("owner")):
                owner = entry.get("owner") or {}
                raise TaoInferenceError(
                    "service %s is being started by another run right now (pid %s on %s, since %s); wait for it "
                    "to finish, or stop it with state=absent"
                    % (entry.get("name"), owner.get("pid"), owner.get("host"), entry.get("started_at")),
                    job_id=entry["job_id"])

    def _reusable(self, current, fingerprint):
        """The one running, fully started entry with this fingerprint, and its status."""
        if len(current) != 1 or current[0].get("fingerprint") != fingerprint or \
                current[0].get("status") != STARTED:
            return None, None
        status = self.driver(current[0]["platform"], current[0]).status(current[0])
        if status.running or status.state == status.PENDING:
            return current[0], status
        return None, None

    def _keep(self, driver, entry, status, probe, wait, wait_timeout, wait_sleep):
        """A matching service runs: leave it, repairing what the platform can (a dead tunnel)."""
        before = copy.deepcopy(entry)
        needs_repair = bool(status.broken)
        if needs_repair and not self.check_mode:
            fields = driver.repair(entry)
            entry.update(fields)
            with self.registry.transaction() as state:
                state.update(entry["job_id"], **fields)
        result = {"changed": needs_repair, "repaired": [status.broken] if needs_repair else [],
                  "service": public_entry(entry), "diff": {"before": before, "after": entry}}
        if wait and not self.check_mode:
            result["readiness"] = self._wait(driver, entry, self._secrets_of(entry), wait_timeout, wait_sleep)
        else:
            result["readiness"] = mask_probe(probe, self._secrets_of(entry))
        return result

    def _secret_source(self):
        """Where secret values are looked up by name: this run's ``secrets`` option first, then the
        environment (``secret_env``). Both reach the platform by one path (command.container_env)."""
        return collections.ChainMap(self.secrets, self.environ)

    def _secrets_of(self, entry):
        """Values of the entry's secret variables, as this run's environment has them, and every secret this
        run was given as an option (for masking)."""
        values = dict((n, self.environ[n]) for n in entry.get("secret_env") or [] if n in self.environ)
        values.update(("secrets.%s" % n, v) for n, v in self.secrets.items())
        return values

    def _endpoint_headers(self, entry):
        """What requests to ``entry``'s service carry (its endpoint's token, from this run's options or
        environment, when the binding in the entry allows it; see readiness.endpoint_headers)."""
        return readiness.endpoint_headers(entry, self.environ, self.options)

    def _probe(self, entry, **kwargs):
        """One readiness probe of ``entry``'s service (with its endpoint's token when it takes one)."""
        headers = self._endpoint_headers(entry)
        if headers:
            kwargs["headers"] = headers
        return readiness.probe(entry["host_url"], **kwargs)

    def _orphans(self, driver, name, known):
        """Platform objects carrying ``name`` (any name when None) that this registry lost track of.
        Objects that name another registry belong to someone else (a shared engine) and are left alone, and
        so does an object claiming the job_id of any service the registry holds (a copy of its labels must
        not make a stop of one name reach another service)."""
        known_ids = set(e["job_id"] for e in known) | set(self.registry.read().entries())
        orphans = []
        for found in driver.find(name):
            job_id = found.labels.get(LABEL_PREFIX + "job_id")
            registry = found.labels.get(LABEL_PREFIX + "registry")
            host = found.labels.get(LABEL_PREFIX + "host")
            if (registry is not None and registry != self.registry.path) or \
                    (host is not None and host != socket.gethostname()):
                continue  # another registry's, or the same path on another machine (a shared engine or cluster)
            if trust.is_uuid(job_id) and job_id not in known_ids:
                orphans.append({"job_id": job_id, "name": found.labels.get(LABEL_PREFIX + "name"),
                                "platform": driver.name, "orphan": True,
                                "platform_job_id": found.labels.get("platform_job_id")})
        return orphans

    def _labels(self, spec, job_id, fingerprint):
        labels = {
            LABEL_PREFIX + "managed-by": "tao.inference",
            LABEL_PREFIX + "job_id": job_id,
            LABEL_PREFIX + "network_arch": spec.network_arch,
            LABEL_PREFIX + "fingerprint": fingerprint,
            LABEL_PREFIX + "registry": self.registry.path,
            LABEL_PREFIX + "host": socket.gethostname(),
        }
        if spec.name:
            labels[LABEL_PREFIX + "name"] = spec.name
        return labels

    def _entry(self, spec, job_id, fingerprint):
        return {
            "job_id": job_id,
            "name": spec.name,
            "platform": spec.platform,
            "platform_job_id": None,
            "network_arch": spec.network_arch,
            "model_path": spec.model_path,
            "image": spec.image,
            "num_gpus": spec.num_gpus,
            "host_port": spec.host_port,
            "connection": connection_of(platforms.driver_class(spec.platform), self.options),
            "secret_env": list(spec.secret_env),
            "shape": spec.shape(),
            "fingerprint": fingerprint,
            "started_at": utc_now(),
            "status": STARTING,
            "owner": procs.this_process(),
            "machine": this_machine(),
            "inventory_host": self.inventory_host,
        }

    def _reserve(self, driver, spec, entry):
        """Write the ``starting`` entry (it names this process) holding the host port, under the lock."""
        needs_port = driver.uses_host_port
        with self.registry.transaction() as state:
            if spec.name:
                # Checked again under the lock: two runs with one name must not both start.
                for other in [e for e in state.find_name(spec.name) if is_this_machine(e)]:
                    raise TaoInferenceError(
                        "another run started service %s (job %s) at the same time; run again to keep it, or stop "
                        "it first" % (spec.name, other["job_id"]), job_id=other["job_id"])
            if needs_port:
                scope = driver.port_scope(spec)
                entry["port_scope"] = scope
                if spec.host_port is not None:
                    self._check_explicit_port(state, driver, spec, scope)
                    entry["host_port"] = spec.host_port
                else:
                    entry["host_port"] = state.allocate_port(
                        scope, is_free=lambda port: driver.port_is_free(spec, port))
            state.put(entry, make_latest=False)
        return entry

    @staticmethod
    def _check_explicit_port(state, driver, spec, scope):
        for other in state.entries().values():
            if other.get("port_scope") == scope and other.get("host_port") == spec.host_port:
                raise TaoInferenceError(
                    "host_port %d is already used by service %s (%s, name %s); choose another port or "
                    "leave host_port unset to get a free one"
                    % (spec.host_port, other["job_id"], other.get("network_arch"), other.get("name"))
                )
        if not driver.port_is_free(spec, spec.host_port):
            raise TaoInferenceError(
                "host_port %d is in use by another program on this host; choose another port or leave "
                "host_port unset to get a free one" % spec.host_port
            )

    def _start_with_port_retry(self, driver, spec, launch, entry):
        tried = []
        for _attempt in range(_PORT_RETRIES):
            try:
                return driver.start(launch)
            except PortTaken as exc:
                if spec.host_port is not None:
                    raise TaoInferenceError(
                        "host_port %d was taken by another program; choose another port" % exc.port)
                tried.append(exc.port)
                with self.registry.transaction() as state:
                    state.update(entry["job_id"], host_port=state.allocate_port(
                        entry["port_scope"], is_free=lambda port: driver.port_is_free(spec, port),
                        exclude=tried))
                    entry["host_port"] = state.get(entry["job_id"])["host_port"]
                launch.host_port = entry["host_port"]
        raise TaoInferenceError("ports %s were all taken while starting; try again" % tried)

    def _forget(self, job_id):
        with self.registry.transaction() as state:
            state.remove(job_id)

    def _wait(self, driver, entry, secrets, timeout, sleep_max):
        history = []

        def alive():
            status = driver.status(entry)
            if status.gone:
                return readiness.Probe(readiness.FATAL, "service_exited", status.detail)
            if status.broken:
                return readiness.Probe(readiness.FATAL, status.broken, status.detail)
            return None

        def on_change(probe, elapsed):
            history.append({"elapsed": round(elapsed, 3), "reason": probe.reason})

        headers = self._endpoint_headers(entry)
        if headers:  # a server that echoes the header must not show the token in a message
            secrets = dict(secrets, **{"(endpoint token)": headers["Authorization"].split(" ", 1)[1]})
        probe = readiness.wait_ready(entry["host_url"], timeout, sleep_max, alive=alive, on_change=on_change,
                                     **({"headers": headers} if headers else {}))
        if probe.ready:
            result = mask_probe(probe, secrets)
            result["history"] = history
            return result
        logs = driver.logs(entry, LOG_LINES, secrets)
        if probe.fatal:
            what = "failed to start: %s" % probe.reason
        else:
            what = "was not ready after %ss (last state: %s)" % (round(timeout, 1), probe.reason)
        msg = "service %s (%s) %s%s." % (
            entry["job_id"], entry["network_arch"], what, (" - " + probe.message) if probe.message else "")
        tail = [mask(line, secrets) for line in (logs or "").splitlines() if line.strip()][-LOG_LINES:]
        if tail:
            msg += " Last container log lines:\n" + "\n".join(tail[-15:])
        raise TaoInferenceError(mask(msg, secrets), readiness=mask_probe(probe, secrets), logs=tail,
                                history=history, job_id=entry["job_id"])

    # -- absent ----------------------------------------------------------------
    def _stop_one(self, driver, entry):
        """Stop the platform object and drop the entry; True if something ran. When the platform
        cannot confirm the stop, the entry stays, with ``stop_error``, and the error is raised."""
        try:
            stopped = driver.stop(entry)
        except TaoInferenceError as exc:
            if not entry.get("orphan"):
                self._mark_stop_error(entry, mask(exc.msg, self._secrets_of(entry)))
            raise
        if not entry.get("orphan"):
            with self.registry.transaction() as state:
                state.remove(entry["job_id"])
        return stopped

    @staticmethod
    def resolve(state, job_id=None, name=None):
        """Entries selected by ``job_id`` (``latest`` only when given) or ``name``; nothing without
        either. The one resolver that the request module uses too (:func:`routing.select`)."""
        if not (job_id or name):
            return []
        return routing.select(state, job_id=job_id, name=name)

    def absent(self, job_id=None, name=None, platform=None):
        state = self.registry.read()
        targets = self.resolve(state, job_id, name)
        if name:
            # Platform objects with the name that the registry lost (e.g. labelled containers).
            drivers = dict((e["platform"], self.driver(e["platform"], e)) for e in targets)
            if not targets and platform:
                drivers[platform] = self.driver(platform)
            for driver in drivers.values():
                targets += self._orphans(driver, name, targets)
        elif job_id and not targets and job_id != "latest" and platform:
            # The registry lost it, but the platform may still run it: only what carries its label.
            targets = [o for o in self._orphans(self.driver(platform), None, []) if o["job_id"] == job_id]
        # changed = something was running (or left exited) on the platform. Dropping the
        # entry of a service that is already gone only tidies the registry.
        # A shared registry (an NFS home): another machine's services are that machine's to stop.
        elsewhere = [{"job_id": e["job_id"], "name": e.get("name"), "machine": e.get("machine"),
                      "inventory_host": e.get("inventory_host")} for e in targets if not is_this_machine(e)]
        targets = [e for e in targets if is_this_machine(e)]
        stopped, tidied = [], []
        for entry in targets:
            driver = self.driver(entry["platform"], entry)
            if self.check_mode:
                ran = driver.status(entry).state != "missing"
            else:
                ran = self._stop_one(driver, entry)
            (stopped if ran else tidied).append(entry["job_id"])
        before = [e for e in targets if not e.get("orphan")]
        return {
            "changed": bool(stopped),
            "stopped": stopped,
            "tidied": [j for j in tidied if any(e["job_id"] == j for e in before)],
            "elsewhere": elsewhere,
            "diff": {"before": before[0] if before else {}, "after": {}},
        }

    def _log_tail(self, entry, lines=15):
        """Last log lines of a failed service, secret values masked."""
        secrets = self._secrets_of(entry)
        try:
            text = self.driver(entry["platform"], entry).logs(entry, lines, secrets)
        except TaoInferenceError:
            return []
        return [line for line in (text or "").splitlines() if line.strip()][-lines:]

    # -- info --------------------------------------------------------------------
    def info(self, job_id=None, name=None, probe_timeout=1.0):
        """What the registry holds and what each platform says of it now. Changes nothing (Ansible's rule
        for ``_info`` modules): :meth:`prune` drops what is gone and releases what this host holds for it."""
        state = self.registry.read()
        entries = self.resolve(state, job_id, name) if job_id or name else state.entries().values()
        entries = sorted(entries, key=lambda e: e.get("started_at") or "")  # oldest first
        services = []
        gone = []
        for entry in entries:
            item = public_entry(entry)
            if not is_this_machine(entry):
                # Listed, never probed or pruned from here: only its own machine can see its platform.
                item.update(platform_status={"state": "elsewhere", "exit_code": None,
                                             "detail": "runs on machine %s; ask that host" % entry.get("machine")},
                            running=None, readiness=None, ready=False, latest=entry["job_id"] == state.latest)
                services.append(item)
                continue
            try:
                driver = self.driver(entry["platform"], entry)
                status = driver.status(entry)
                item["platform_status"] = status.as_dict()
                # A platform's detail may quote the server's last words (a termination message).
                item["platform_status"]["detail"] = mask(item["platform_status"]["detail"], self._secrets_of(entry))
                item["running"] = status.running
                if status.gone:
                    gone.append(entry["job_id"])
            except TaoInferenceError as exc:
                item["platform_status"] = {"state": "unknown", "detail": exc.msg, "exit_code": None}
                item["running"] = None
            if entry.get("status") == STARTING:
                # A start in progress, or one whose run was killed (its process is gone).
                item["abandoned"] = not procs.owner_alive(entry.get("owner"))
                if item["abandoned"]:
                    item["platform_status"]["detail"] += (
                        "; its start was interrupted (the run that started it is gone): stop it with state=absent "
                        "and job_id %s, or start it again by name" % entry["job_id"])
            probe = None
            if item["running"] and entry.get("host_url"):
                try:
                    probe = self._probe(entry, timeout=probe_timeout)
                except TaoInferenceError as exc:  # the token is not there (or not this one): nothing is sent
                    probe = readiness.Probe(readiness.WAITING, "unauthenticated", exc.msg)
            item["readiness"] = mask_probe(probe, self._secrets_of(entry))
            item["ready"] = bool(probe and probe.ready)
            if (probe is not None and probe.fatal) or entry["job_id"] in gone:
                item["log_tail"] = self._log_tail(entry)
            item["latest"] = entry["job_id"] == state.latest
            services.append(item)
        rejected = [{"key": key, "problem": problem} for key, problem in sorted(state.rejected().items())]
        return {"changed": False, "services": services, "latest": state.latest, "rejected": rejected}

    def watch(self, job_id, previous, timeout, sleep_max=0.5):
        """Wait up to ``timeout`` s for the readiness reason of ``job_id`` to
        differ from ``previous`` (see :func:`watched_state`: a platform that keeps the service waiting says
        why, e.g. Slurm's pending reason); return :meth:`info` of that service."""
        deadline = readiness.Deadline(timeout)
        delay = 0.05
        while True:
            result = self.info(job_id=job_id)
            if not result["services"]:
                return result
            item = result["services"][0]
            pending = item["platform_status"]["state"] == "pending"
            if watched_state(item) != previous or item["ready"] or not (item["running"] or pending) or \
                    deadline.expired:
                return result
            time.sleep(min(delay, deadline.remaining()))
            delay = min(delay * 2, sleep_max)

    # -- prune -------------------------------------------------------------------
    def _prune_blocker(self, entry):
        """Why ``entry`` must not be pruned from here whatever its platform says, or None."""
        if not is_this_machine(entry):
            return "it runs on machine %s, which alone can see its platform and what it holds: prune it there" \
                % entry.get("machine")
        if entry.get("status") == STARTING and procs.owner_alive(entry.get("owner")):
            owner = entry.get("owner") or {}
            return "a run is starting it now (pid %s on %s)" % (owner.get("pid"), owner.get("host"))
        return None

    def prune(self, job_id=None, name=None):
        """Drop the registry entries of services that are gone and release what this machine holds for them
        (the SSH tunnel of a Slurm job cancelled elsewhere, a port forward); a platform object left behind
        (an exited container, a failed Job and its Secret) is removed as ``state: absent`` removes it.
        ``job_id`` or ``name`` selects; neither means every entry. Kept, each with its reason: entries of
        another machine (a shared registry), a start under way, a service that still runs or whose platform
        cannot be asked. An entry whose leftover cannot be removed stays with ``stop_error`` and the run
        fails after the others are done."""
        state = self.registry.read()
        entries = self.resolve(state, job_id, name) if job_id or name else state.entries().values()
        pruned, released, removed, kept, before, failed = [], [], [], [], {}, []
        for entry in sorted(entries, key=lambda e: e.get("started_at") or ""):
            secrets = self._secrets_of(entry)
            reason = self._prune_blocker(entry)
            if reason is None:
                try:
                    driver = self.driver(entry["platform"], entry)
                    status = driver.status(entry)
                except TaoInferenceError as exc:
                    reason = "its platform cannot be asked now: %s" % mask(exc.msg, secrets)
                else:
                    if not status.gone:
                        reason = "it is %s" % status.state
            if reason is not None:
                kept.append({"job_id": entry["job_id"], "name": entry.get("name"), "reason": reason})
                continue
            before[entry["job_id"]] = public_entry(entry)
            if self.check_mode:
                pruned.append(entry["job_id"])
                continue
            try:
                if driver.release(entry):
                    released.append(entry["job_id"])
                if status.state == status.EXITED:
                    if self._stop_one(driver, entry):  # drops the entry; keeps it with stop_error if it fails
                        removed.append(entry["job_id"])
                    pruned.append(entry["job_id"])
                    continue
            except TaoInferenceError as exc:
                message = mask(exc.msg, secrets)
                kept.append({"job_id": entry["job_id"], "name": entry.get("name"),
                             "reason": "removing what is left of it failed: %s" % message})
                failed.append("%s (%s)" % (entry["job_id"], message))
                del before[entry["job_id"]]
                continue
            with self.registry.transaction() as live:
                if live.remove(entry["job_id"]):
                    pruned.append(entry["job_id"])
        result = {"changed": bool(pruned or released or removed), "pruned": pruned, "released": released,
                  "removed": removed, "kept": kept,
                  "diff": {"before": before, "after": dict((j, e) for j, e in before.items() if j not in pruned)}}
        if failed:
            raise TaoInferenceError(
                "pruned %d service(s), but what is left of %s could not be removed; their entries stay (with "
                "stop_error) so nothing is forgotten: see tao_inference_info, then stop each with state=absent and "
                "its job_id" % (len(pruned), ", ".join(failed)), **dict((k, v) for k, v in result.items() if k != "diff"))
        return result
