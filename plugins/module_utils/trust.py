# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checks at the trust boundaries: what a user, a registry file or a platform hands us.

Every check is a full match: a value with a trailing newline, a leading ``-``
(which ssh or a CLI would read as an option) or a control character is refused.
ssh children get :func:`ssh_environ` (the few variables ssh needs, nothing else)
and other children :func:`child_environ` (ours, less every secret), so a long-lived
ssh tunnel never carries ``HF_TOKEN`` in ``/proc/<pid>/environ`` and an ssh
``SendEnv`` line cannot forward it.
"""

import ipaddress
import os
import re

from urllib.parse import urlsplit

from ansible_collections.tao.inference.plugins.module_utils import catalog
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# Ids platforms give (a Slurm job id, a Kubernetes object name, a cloud id): never a leading '-'.
PLATFORM_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,252}")
HEX = re.compile(r"[0-9a-f]{1,64}")
# A DNS name or an IPv4 address (IPv6 is checked by ipaddress); never a leading '-'.
_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")
# POSIX-ish login names (what useradd and ssh take); never a leading '-', never '@'.
_USER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}\$?")
_SECRET_NAME = re.compile(r".*(?:_TOKEN|_KEY|_SECRET)|.*PASSWORD.*|.*PASSWD.*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
DIGITS = _DIGITS = re.compile(r"[0-9]{1,12}")


_TOKEN = re.compile(r"[\x21-\x7e]{1,8192}")


def is_token(value):
    """True for a credential that can go in an HTTP header as it is: printable ASCII, no space, no newline."""
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def is_loopback(name):
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if not isinstance(name, str):
        return False
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_uuid(value):
    return isinstance(value, str) and UUID.fullmatch(value) is not None


def check_job_id(value, what="job_id", allow_latest=False):
    """A job_id is the UUID the collection gave the service (or ``latest`` where allowed)."""
    if allow_latest and value == "latest":
        return value
    if not is_uuid(value):
        raise TaoInferenceError(
            "%s %r is not a job_id: job_ids are the lower-case UUIDs the collection gives each service "
            "(see tao_inference_info)%s" % (what, value, "; or give 'latest'" if allow_latest else ""))
    return value


def check_host(value, what):
    """A host name or address for ssh or an engine URL; refuses what a CLI would read as an option.
    IPv6 scope ids (``%eth0``) are refused: ssh would pass them on to a ``ProxyCommand``."""
    if isinstance(value, str) and not _CONTROL.search(value) and "%" not in value:
        bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
        try:
            ipaddress.ip_address(bare)
            return value
        except ValueError:
            if _HOST.fullmatch(value):
                return value
    raise TaoInferenceError(
        "%s %r is not a host name or address (letters, digits, '.', '-' and '_' only; it must not start "
        "with '-')" % (what, value))


def check_user(value, what):
    if value is None or (isinstance(value, str) and _USER.fullmatch(value)):
        return value
    raise TaoInferenceError(
        "%s %r is not a user name (letters, digits, '.', '-' and '_' only; it must not start with '-')"
        % (what, value))


def check_port(value, what):
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        port = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        port = int(value)
    else:
        port = 0
    if not 1 <= port <= 65535:
        raise TaoInferenceError("%s %r is not a TCP port (1-65535)" % (what, value))
    return port


def check_path(value, what):
    """A local file path option (ssh config, key): absolute, no control characters."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/") or _CONTROL.search(value):
        raise TaoInferenceError("%s %r is not an absolute file path" % (what, value))
    return value


def check_http_url(value, what="host_url"):
    """``http(s)://host:port[/path]`` with a valid host and no user info."""
    error = TaoInferenceError("%s %r is not an http(s)://host:port URL" % (what, value))
    if not isinstance(value, str) or _CONTROL.search(value) or " " in value:
        raise error
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError:
        raise error
    if url.scheme not in ("http", "https") or not url.hostname or url.username or url.password \
            or url.query or url.fragment:
        raise error
    check_host(url.hostname if ":" not in url.hostname else "[%s]" % url.hostname, what)
    if port is not None and not 1 <= port <= 65535:
        raise error
    return value


def check_text(value, what):
    """Free text that goes into a message or a label: no control characters."""
    if value is None or (isinstance(value, str) and not _CONTROL.search(value)):
        return value
    raise TaoInferenceError("%s %r holds control characters" % (what, value))


# -- kinds of values a registry entry may hold ----------------------------------------
def _accepts(check, value):
    try:
        check(value, "value")
    except TaoInferenceError:
        return False
    return True


def _is_destination(value):
    user, _at, name = value.rpartition("@")
    return _accepts(check_user, user or None) and _accepts(check_host, name)


def _is_int(value, low, high):
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


_KINDS = {
    "host": lambda v: isinstance(v, str) and _accepts(check_host, v),
    "destination": lambda v: isinstance(v, str) and _is_destination(v),
    "user": lambda v: isinstance(v, str) and _accepts(check_user, v),
    "port": lambda v: _is_int(v, 1, 65535),
    "pid": lambda v: _is_int(v, 1, 2 ** 31),
    "path": lambda v: isinstance(v, str) and _accepts(check_path, v),
    "url": lambda v: isinstance(v, str) and _accepts(check_http_url, v),
    "id": lambda v: isinstance(v, str) and PLATFORM_ID.fullmatch(v) is not None,
    "hex": lambda v: isinstance(v, str) and HEX.fullmatch(v) is not None,
    "digits": lambda v: isinstance(v, (str, int)) and not isinstance(v, bool) and DIGITS.fullmatch(str(v)) is not None,
    "text": lambda v: isinstance(v, str) and _CONTROL.search(v) is None,
}


def kind_problem(kind, value):
    """Why ``value`` is not of ``kind`` (a name in :data:`_KINDS`, or a function that returns the problem
    or None), or None when it is."""
    if callable(kind):
        return kind(value)
    return None if _KINDS[kind](value) else "is not a valid %s" % kind


# -- secrets in child processes ----------------------------------------------------
def known_secret_names():
    return tuple(catalog.SECRET_ENV)


def looks_secret(name):
    """True for names that hold credentials by convention (``*_TOKEN``, ``*_KEY``, ``*_SECRET``,
    ``*PASSWORD*``) and for the collection's own secret names."""
    upper = str(name).upper()
    return upper in known_secret_names() or _SECRET_NAME.fullmatch(upper) is not None


# What an ssh child needs from our environment: nothing else is passed on, so no secret, whatever
# its name, can reach a tunnel's /proc/<pid>/environ or an ssh SendEnv line.
SSH_ENVIRON = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "TMPDIR", "TZ",
               "SSH_AUTH_SOCK", "KRB5CCNAME", "KRB5_CONFIG", "XDG_RUNTIME_DIR")


def ssh_environ(environ=None):
    """The environment for an ssh child: only :data:`SSH_ENVIRON` and the ``LC_*`` locale variables."""
    environ = os.environ if environ is None else environ
    return dict((key, value) for key, value in environ.items()
                if key in SSH_ENVIRON or (key.startswith("LC_") and ENV_NAME.fullmatch(key)))


def child_environ(secret_names=(), by_pattern=True, environ=None):
    """The environment for a child process: ours, less every secret.

    ``secret_names`` are dropped too (a service's own ``secret_env``). With ``by_pattern`` every
    name that :func:`looks_secret` goes; without it (a docker credential helper, which may need
    its own cloud credentials) only the collection's secret names and ``secret_names`` go.
    """
    environ = os.environ if environ is None else environ
    drop = set(known_secret_names()) | set(secret_names or ())
    return dict((key, value) for key, value in environ.items()
                if key not in drop and not (by_pattern and looks_secret(key)))
