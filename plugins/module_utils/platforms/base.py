# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The interface every platform driver implements.

The service layer (service.py) owns the registry, port reservation,
readiness and idempotency; a driver knows its platform's options, how to run
one container description there and how to look at it again. Generic code
asks a platform only what this interface says; it never names a platform.

What a driver class declares::

    name                                 the value of the ``platform`` option
    OPTIONS                              argument spec of the options it owns (defaults, choices,
                                         environment fallbacks); modules merge every driver's
    CONNECTION                           {connection key: option}: where a service runs, recorded in
                                         its registry entry so stop/info reach it again
    FILE_CONNECTION                      connection keys that name local files (an ssh config, a key):
                                         taken from this run's options only, never from a registry entry
    CONNECTION_KINDS, ENTRY_FIELDS       how the connection and the entry fields it records are checked
                                         when a registry entry is read back (it is untrusted data)
    EXECUTION_BACKEND                    the value of TAO_EXECUTION_BACKEND the server is given
    ENDPOINT_TOKENS                      {environment variable: option} holding the token a service's
                                         endpoint asks for ({} when its endpoints take none)
    uses_host_port                       True when services get a host port from the registry
    spec_options(params, environ)        -> dict: the validated options that shape the job (they go
                                            into the spec and its fingerprint)
    from_options(connection, params)     -> a driver reaching ``connection``, with this run's settings

What a driver does::

    preflight(spec, report)              -> dict of facts, or TaoInferenceError (changes nothing);
                                            report=False: only the checks a start needs, fast
    prepare(spec)                        -> None, or what the pull did: make the image available (pull)
    port_scope(spec)                     -> str (ports are unique per scope) or None
    port_is_free(spec, port)             -> bool
    start(launch)                        -> dict of entry fields (host_url, platform_job_id, ...)
    status(entry)                        -> PlatformStatus (``broken``: a forward such as a tunnel is down;
                                            ``extra``: facts to report)
    logs(entry, lines, secrets)          -> str (the values of secrets masked)
    stop(entry)                          -> bool (something was stopped); raises when it cannot confirm
    find(name=None)                      -> [PlatformStatus] of services it started (orphan search)
    release(entry)                       -> bool: free local resources of a service that is gone
    repair(entry)                        -> dict of entry fields changed to mend a running service
    recorded_connection(connection)      -> the connection to record for a new service
    close()                              -> None: drop connections held for this module run
"""

import abc
import re

from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError

LABEL_PREFIX = "tao.inference."
MASK = "********"
# Shorter secret values are refused (check_secret_length): masking them would mangle ordinary text.
MIN_SECRET_LENGTH = 4


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def check_secret_length(value, what, advice):
    """Refuse a secret ``value`` too short for :func:`mask` to hide; ``what`` names it (never the value),
    ``advice`` says what to give instead."""
    if len(value) < MIN_SECRET_LENGTH:
        raise TaoInferenceError("%s is shorter than %d characters: a value that short cannot be kept out of logs and "
                                "messages (masking it would mangle ordinary text); %s" % (what, MIN_SECRET_LENGTH, advice))


def mask(text, secrets):
    """Replace every secret value in ``text`` (values of MIN_SECRET_LENGTH+ characters) and drop
    terminal colour codes (servers colour their logs; messages must stay readable)."""
    if not text:
        return text
    text = _ANSI.sub("", text)
    for value in sorted(set(v for v in (secrets or {}).values() if v and len(v) >= MIN_SECRET_LENGTH), key=len,
                        reverse=True):
        text = text.replace(value, MASK)
    return text


class Launch(object):
    """One container to run, the same on every platform."""

    def __init__(self, spec, job_id, command, env, secret_env, host_port, labels, timeout=900,
                 on_submitted=None):
        self.spec = spec
        self.timeout = timeout          # seconds the platform may take to run it (e.g. Slurm PENDING)
        self.on_submitted = on_submitted or (lambda fields: None)  # record platform ids early
        self.job_id = job_id
        self.command = command          # the inner shell string
        self.env = env                  # non-secret container variables
        self.secret_env = secret_env    # name -> value: secret channel only
        self.host_port = host_port      # None for platforms that need none
        self.labels = labels


class PlatformStatus(object):
    """What the platform says about one service."""

    RUNNING = "running"
    PENDING = "pending"
    EXITED = "exited"
    MISSING = "missing"

    def __init__(self, state, detail="", exit_code=None, labels=None, ident=None, extra=None, broken=None):
        self.state = state
        self.extra = extra or {}  # platform facts to report, e.g. {"slurm_state": "RUNNING"}
        self.broken = broken      # what broke around a running service (e.g. "tunnel_down"), or None
        self.detail = detail
        self.exit_code = exit_code
        self.labels = labels or {}
        self.ident = ident

    @property
    def running(self):
        return self.state == self.RUNNING

    @property
    def gone(self):
        return self.state in (self.EXITED, self.MISSING)

    def as_dict(self):
        result = {"state": self.state, "detail": self.detail, "exit_code": self.exit_code}
        result.update(self.extra)
        if self.broken:
            result["broken"] = self.broken
        return result


class Driver(object, metaclass=abc.ABCMeta):
    """Base class; see the module docstring for the contract."""

    name = None
    OPTIONS = {}
    CONNECTION = {}
    FILE_CONNECTION = ()
    CONNECTION_KINDS = {}   # {connection key: kind (see trust.kind_problem)}: how a recorded one is checked
    ENTRY_FIELDS = {}       # {entry field: kind}: the fields start() adds, checked when read back
    EXECUTION_BACKEND = None  # what the server is told it runs on (TAO_EXECUTION_BACKEND)
    ENDPOINT_TOKENS = {}  # {environment variable: option}: where the token an endpoint asks for comes from
    uses_host_port = False

    @classmethod
    def spec_options(cls, params, environ):
        return {}

    @classmethod
    @abc.abstractmethod
    def from_options(cls, connection, params):
        """A driver that reaches ``connection`` ({key: value} as :attr:`CONNECTION` names them),
        with this run's other settings from ``params``."""

    @abc.abstractmethod
    def preflight(self, spec, report=True):
        """Facts about the platform; fails when a start could not work."""

    def prepare(self, spec):
        return None

    def port_scope(self, spec):
        return None

    def port_is_free(self, spec, port):
        return True

    @abc.abstractmethod
    def start(self, launch):
        """Run ``launch``; the entry fields it made (host_url, platform_job_id...)."""

    @abc.abstractmethod
    def status(self, entry):
        """A :class:`PlatformStatus` of ``entry``'s service."""

    def logs(self, entry, lines=40, secrets=None):
        return ""

    @abc.abstractmethod
    def stop(self, entry):
        """Stop ``entry``'s service; True when something was stopped."""

    def find(self, name=None):
        return []

    def close(self):
        """Close connections held for this module run (not the services)."""
        return None

    def release(self, entry):
        """Free what this machine holds for a service that is gone (e.g. a tunnel)."""
        return False

    def recorded_connection(self, connection):
        """The connection to record for a new service: where it really runs (e.g. the engine an
        environment variable or a context chose), so a later run reaches the same place."""
        return connection

    def repair(self, entry):
        """Fix what broke around a running service (e.g. a dead tunnel); changed fields."""
        return {}


class PortTaken(TaoInferenceError):
    """The platform refused ``port``: another program took it after the check."""

    def __init__(self, port):
        super(PortTaken, self).__init__("host port %d is taken" % port)
        self.port = port
