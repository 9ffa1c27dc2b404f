# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""brev: the service runs as a container on an NVIDIA Brev instance, through the instance's Docker engine.

The instance is ``brev_instance`` (a name or id; a RUNNING one is used as it is, a STARTING one is
waited for, a STOPPED one is started only with ``brev_start_stopped``), or, without it, one the
collection creates (``brev create --detached`` with ``brev_instance_type`` / ``brev_gpu_name``) and
deletes again on ``state: absent``: only an instance it created itself, as its registry entry records.

The container itself is the local-docker driver's: the same Engine API client and the same container
description, reached over SSH (``ssh://<instance>``, through Brev's SSH configuration, which
``brev refresh`` writes). One engine driver, two ways in.

Where it is reached:

* ``brev_expose: tunnel`` (default): the port is published on the instance's loopback and a local
  ``ssh -N -L 127.0.0.1:<port>:127.0.0.1:<port> <instance>`` makes it ``http://localhost:<port>``; the
  tunnel is tracked by pid and start time like a Slurm tunnel;
* ``brev_expose: direct``: the port is published on the instance's address (``ssh -G <instance>``, or
  ``brev_bind_address``) and ``host_url`` is that address. Ports are allocated per instance.

The ``brev`` CLI runs with stdin closed (it would otherwise ask to log in) and an environment without
secrets. It takes a login token only on its command line (``brev login --token``), where every local
user can read it (``/proc/<pid>/cmdline``), and reads it from neither stdin nor the environment. So when
the CLI says it is logged out and a token is given (``brev_api_token``, else ``BREV_API_TOKEN``), the
driver does what ``brev login --token`` does itself: it writes the CLI's credentials file
(``$HOME/.brev/credentials.json``, the CLI's ``LoginWithToken``: a JWT that is still valid as the access
token, any other token as the refresh token) with mode 0600, atomically, never through a symbolic link
or into a folder another user can write, then asks ``brev ls`` whether the CLI is logged in. A token the
platform refuses leaves the credentials file as it was. A working login is never touched.
"""

import base64
import binascii
import grp
import json
import math
import os
import pwd
import re
import stat
import subprocess
import time
import uuid

from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.platforms.base import (
    Driver, PlatformStatus, PortTaken, check_secret_length, mask)
from ansible_collections.tao.inference.plugins.module_utils.platforms.local_docker import LocalDockerDriver
from ansible_collections.tao.inference.plugins.module_utils.registry import port_is_free
from ansible_collections.tao.inference.plugins.module_utils.ssh import (
    SSH_OPTIONS, SSHTarget, close_tunnel, forward_spec, open_tunnel, tunnel_alive,
)
from ansible_collections.tao.inference.plugins.module_utils.trust import check_host, child_environ, is_token

INSTANCE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}")
MADE = re.compile(r"tao-[0-9a-f]{16}")  # the names of instances the collection creates
_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}(,[A-Za-z0-9][A-Za-z0-9._:-]{0,127}){0,15}")
_GPU = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")
EXPOSE = ("tunnel", "direct")
# Instance states: the ones that end in RUNNING by themselves, and the ones that will not.
ON_THE_WAY = ("STARTING", "DEPLOYING", "CREATING")
CLI_TIMEOUT = 120  # seconds one brev command may take (create --detached, delete and ls return at once)
LISTING_TTL = 5  # seconds a `brev ls` answer is reused while the service's container is watched
_LOGGED_OUT = "logged out"


ENV_TOKEN = "BREV_API_TOKEN"
CREDENTIALS = "credentials.json"  # in $HOME/.brev, as the CLI's store.FileStore keeps it
INVALID_REFRESH = ".invalid-refresh-token"  # where the CLI puts a refresh token it cannot use
AUTO_LOGIN = "auto-login"  # the CLI's placeholder for the half of the pair a token login does not give
# The CLI takes a Kubernetes service account token, when there is one, instead of its credentials file.
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
# The signing methods golang-jwt v5 knows: a JWT naming another is no access token to the CLI.
_JWT_ALGS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512",
             "PS256", "PS384", "PS512", "EdDSA", "none")
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")


def _not_json(constant):
    raise ValueError("%s is no JSON" % constant)  # Go's decoder refuses NaN and Infinity


def _jwt_part(segment):
    """A JWT segment as golang-jwt's ParseUnverified reads it (unpadded base64url, then JSON), or False."""
    if not _SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        return False
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(data.decode("utf-8", "replace"), parse_constant=_not_json)
    except (ValueError, TypeError, binascii.Error):
        return False
    return value if value is None or isinstance(value, dict) else False


def access_token_valid(token, now=None):
    """The brev CLI's isAccessTokenValid: ``token`` parses as a JWT (not verified) whose exp, nbf and iat,
    when present, hold at ``now``."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    header, claims = _jwt_part(parts[0]), _jwt_part(parts[1])
    if header is False or claims is False or not isinstance((header or {}).get("alg"), str) or \
            header["alg"] not in _JWT_ALGS:
        return False
    now = time.time() if now is None else now
    for name, holds in (("exp", lambda at: now < at), ("nbf", lambda at: now >= at), ("iat", lambda at: now >= at)):
        at = (claims or {}).get(name)
        if at is None:
            continue
        if isinstance(at, bool) or not isinstance(at, (int, float)) or math.isnan(at):
            return False
        if at != 0 and not holds(math.floor(at)):
            return False
    return True


def _go_json_string(text):
    """``text`` as Go's encoding/json writes a string (HTML-safe escapes)."""
    quoted = json.dumps(text, ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        quoted = quoted.replace(char, escape)
    return quoted


def credentials_text(token, now=None):
    """The credentials file ``brev login --token <token>`` writes: the CLI's AuthTokens through
    ``json.MarshalIndent(v, "", " ")`` (one space, no newline at the end)."""
    access, refresh = (token, AUTO_LOGIN) if access_token_valid(token, now) else (AUTO_LOGIN, token)
    return '{\n "access_token": %s,\n "refresh_token": %s\n}' % (_go_json_string(access), _go_json_string(refresh))


def _private_dir(fd, path):
    """Refuse the open folder ``fd`` unless it is ours and no other user can write to it (group-writable
    only when the group is the user's own, holding nobody else)."""
    info = os.fstat(fd)
    if not stat.S_ISDIR(info.st_mode):
        raise TaoInferenceError("%s is not a folder" % path)
    if info.st_uid != os.geteuid():
        raise TaoInferenceError("%s belongs to another user (uid %d), so the brev CLI's credentials are not written "
                                "there: run as the user who owns it, or set HOME to your own home" % (path, info.st_uid))
    if info.st_mode & stat.S_IWOTH or (info.st_mode & stat.S_IWGRP and not _own_group(info.st_gid)):
        raise TaoInferenceError("%s can be written by other users, who could swap the brev CLI's credentials: "
                                "chmod go-w %s" % (path, path))


def _own_group(gid):
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    return group.gr_name == user and set(group.gr_mem) <= {user}


class CredentialsFile(object):
    """The brev CLI's credentials file, ``$HOME/.brev/credentials.json`` (``HOME`` as the CLI gets it),
    written and put back through file descriptors of folders checked to be private."""

    def __init__(self, home):
        if not home or not os.path.isabs(home):
            raise TaoInferenceError("HOME is %s, so the brev CLI's credentials file cannot be found: set HOME to "
                                    "the home whose ~/.brev the CLI uses" % ("not set" if not home else "relative"))
        self.home = home
        self.folder = os.path.join(home, ".brev")
        self.path = os.path.join(self.folder, CREDENTIALS)

    def _open_folder(self):
        """(fd of ~/.brev, True when this call made the folder)."""
        made = False
        try:
            home = os.open(self.home, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise TaoInferenceError("cannot open HOME %s for the brev CLI's credentials: %s" % (self.home, exc.strerror))
        try:
            _private_dir(home, self.home)
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
            try:
                folder = os.open(".brev", flags, dir_fd=home)
            except FileNotFoundError:
                os.mkdir(".brev", 0o700, dir_fd=home)
                made = True
                folder = os.open(".brev", flags, dir_fd=home)
        except OSError as exc:
            raise TaoInferenceError("%s is a symbolic link or no folder (%s): the brev CLI's credentials are not "
                                    "written through it; make it a folder of your own" % (self.folder, exc.strerror))
        finally:
            os.close(home)
        try:
            _private_dir(folder, self.folder)
        except TaoInferenceError:
            os.close(folder)
            raise
        return folder, made

    @staticmethod
    def _read(folder, name):
        """(bytes, mode) of the regular file ``name`` in ``folder``, or None when there is none."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TaoInferenceError("~/.brev/%s cannot be read (%s; a symbolic link is never followed): remove it "
                                    "or log in with `brev login`" % (name, exc.strerror))
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise TaoInferenceError("~/.brev/%s is not a regular file: remove it" % name)
            return handle.read(1 << 20), stat.S_IMODE(info.st_mode)

    @staticmethod
    def _replace(folder, name, data, mode=0o600):
        """Put ``data`` in ``name`` atomically: a new file (mode ``mode``) renamed over it."""
        tmp = ".%s.tao-%s" % (name, uuid.uuid4().hex[:12])
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                os.fchmod(handle.fileno(), mode & 0o777)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
            os.fsync(folder)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=folder)
            except OSError:
                pass
            raise

    def write(self, token):
        """Log the CLI in with ``token`` as ``brev login --token`` would; what to hand to :meth:`put_back`."""
        folder, made = self._open_folder()
        try:
            before = (self._read(folder, CREDENTIALS), self._read(folder, INVALID_REFRESH), made)
            self._replace(folder, CREDENTIALS, credentials_text(token).encode("utf-8"))
            return before
        except OSError as exc:
            raise TaoInferenceError("cannot write the brev CLI's credentials file %s: %s" % (self.path, exc.strerror))
        finally:
            os.close(folder)

    def put_back(self, before, token):
        """Undo :meth:`write`: the credentials file as it was (or none), and no ``.invalid-refresh-token``
        holding ``token`` that the CLI wrote meanwhile; ~/.brev itself goes again when :meth:`write` made it
        and it is empty."""
        folder = self._open_folder()[0]
        try:
            for name, was in zip((CREDENTIALS, INVALID_REFRESH), before[:2]):
                now = self._read(folder, name)
                if now is None or (was is not None and now[0] == was[0]):
                    continue
                if was is not None:
                    self._replace(folder, name, was[0], was[1])
                elif name == CREDENTIALS or now[0].strip() == token.encode("utf-8"):
                    os.unlink(name, dir_fd=folder)
        except OSError as exc:
            raise TaoInferenceError("cannot put the brev CLI's credentials file %s back: %s" % (self.path, exc.strerror))
        finally:
            os.close(folder)
        if before[2]:
            try:
                os.rmdir(self.folder)
            except OSError:
                pass  # something else is in it now: it stays


def instance_problem(value):
    return None if isinstance(value, str) and INSTANCE.fullmatch(value) else \
        "is not a Brev instance name or id (letters, digits, '.', '_', '-'; at most 63; not starting with '-')"


class BrevDriver(Driver):
    """Driver for a Brev instance's Docker engine (the local-docker engine driver over SSH)."""

    name = "brev"
    OPTIONS = dict(
        brev_instance=dict(type="str"),
        brev_instance_type=dict(type="str"),
        brev_gpu_name=dict(type="str"),
        brev_expose=dict(type="str", choices=list(EXPOSE), default="tunnel"),
        brev_bind_address=dict(type="str"),
        brev_start_stopped=dict(type="bool", default=False),
        brev_api_token=dict(type="str", no_log=True),
        pull=LocalDockerDriver.OPTIONS["pull"],
        **SSH_OPTIONS
    )
    CONNECTION = {"instance": "brev_instance", "ssh_config": "ssh_config", "key_path": "ssh_key_path"}
    FILE_CONNECTION = ("ssh_config", "key_path")
    CONNECTION_KINDS = {"instance": instance_problem, "ssh_config": "path", "key_path": "path"}
    ENTRY_FIELDS = {"brev_instance_id": "id", "brev_created": lambda v: None if isinstance(v, bool) else "not a bool",
                    "brev_address": "host", "container_id": "hex", "docker_url": "url", "tunnel_pid": "pid",
                    "tunnel_start_time": "digits", "brev_port": "port", "brev_expose": lambda v: None if v in EXPOSE else "unknown",
                    "brev_logged_in_with_token": lambda v: None if isinstance(v, bool) else "not a bool"}
    EXECUTION_BACKEND = "local-docker"
    uses_host_port = True

    @classmethod
    def spec_options(cls, params, environ):
        """What shapes the service: the instance (or what an instance made for it is), how it is reached."""
        options = {"expose": params.get("brev_expose") or "tunnel"}
        checks = (("instance", "brev_instance", INSTANCE), ("instance_type", "brev_instance_type", _TYPE),
                  ("gpu_name", "brev_gpu_name", _GPU))
        for key, option, pattern in checks:
            value = params.get(option)
            if value is not None and not (isinstance(value, str) and pattern.fullmatch(value)):
                raise TaoInferenceError("%s %r is not valid (letters, digits and . _ - only; it must not start "
                                        "with '-')" % (option, value))
            if value is not None:
                options[key] = value
        if options.get("instance") and (options.get("instance_type") or options.get("gpu_name")):
            raise TaoInferenceError("brev_instance_type and brev_gpu_name choose the instance the collection creates; "
                                    "with brev_instance %s an existing instance is used: give one or the other"
                                    % options["instance"])
        bind = params.get("brev_bind_address")
        if bind is not None:
            if options["expose"] != "direct":
                raise TaoInferenceError("brev_bind_address is where brev_expose direct publishes the port; with "
                                        "brev_expose tunnel the port is on the instance's loopback")
            options["bind_address"] = check_host(bind, "brev_bind_address")
        return options

    @classmethod
    def from_options(cls, connection, params):
        instance = connection.get("instance")
        if instance is not None and instance_problem(instance):
            raise TaoInferenceError("brev_instance %r %s" % (instance, instance_problem(instance)))
        # The token is read here, not by the argument spec, so an exported BREV_API_TOKEN never counts as an
        # option given to another platform.
        token = params.get("brev_api_token") or os.environ.get(ENV_TOKEN) or None
        if token is not None and not is_token(token):
            raise TaoInferenceError("brev_api_token (%s) holds a character a token never has (a space, a newline or "
                                    "another control character, e.g. from a file read as it is): strip it; the value "
                                    "is not shown" % ENV_TOKEN)
        if token is not None:
            check_secret_length(token, "brev_api_token (%s)" % ENV_TOKEN, "no Brev token is: give the one Brev issued")
        return cls(instance=instance, ssh_config=connection.get("ssh_config"), key_path=connection.get("key_path"),
                   pull=params.get("pull") or "missing", start_stopped=bool(params.get("brev_start_stopped")),
                   expose=params.get("brev_expose") or "tunnel", bind_address=params.get("brev_bind_address"),
                   api_token=token)

    def __init__(self, instance=None, ssh_config=None, key_path=None, pull="missing", start_stopped=False,
                 expose="tunnel", bind_address=None, runner=subprocess.run, api_token=None):
        self.instance = instance
        self.ssh_config = ssh_config
        self.key_path = key_path
        self.pull = pull
        self.start_stopped = start_stopped
        self.expose = expose
        self.bind_address = bind_address
        self._run = runner
        self._engines = {}
        self._new_name = None
        self._made = False  # this run created the instance (a start tried again must not create it twice)
        self.secret_names = ()  # the service's secret_env names: never in the CLI's environment either
        self._listed = None
        self.api_token = api_token  # logs a logged-out CLI in (never on a command line: see _log_in)
        self._login_tried = False
        self.logged_in_with_token = False  # this run logged the CLI in with the token

    # -- the brev CLI ----------------------------------------------------------------
    def _call(self, words, timeout=CLI_TIMEOUT):
        """(exit code, stdout, stderr on one line) of ``brev words...``: stdin closed, no secret in its
        environment, the token masked in what it printed."""
        try:
            proc = self._run(["brev"] + list(words), stdin=subprocess.DEVNULL, capture_output=True,  # pylint: disable=ansible-bad-function
                             timeout=timeout, check=False, env=child_environ(secret_names=self.secret_names))
        except OSError as exc:
            raise TaoInferenceError("cannot run the brev CLI (%s): install it (https://docs.nvidia.com/brev/) and log "
                                    "in with `brev login`" % exc)
        except subprocess.TimeoutExpired:
            raise TaoInferenceError("`brev %s` did not finish within %ss" % (words[0], timeout))
        hidden = {"token": self.api_token}
        return (proc.returncode, mask(proc.stdout.decode("utf-8", "replace"), hidden),
                mask(" ".join(proc.stderr.decode("utf-8", "replace").split()), hidden))

    @staticmethod
    def _logged_out(out, err):
        return _LOGGED_OUT in out or "declined to login" in err or err == "EOF"

    def _brev(self, *words, **kwargs):
        """Run ``brev words...``; its stdout. A logged-out CLI is logged in with the token when one is given
        (:meth:`_log_in`) and the command runs again."""
        timeout = kwargs.get("timeout", CLI_TIMEOUT)
        code, out, err = self._call(words, timeout)
        if code != 0 and self._logged_out(out, err) and self._log_in():
            code, out, err = self._call(words, timeout)
        if code != 0:
            if self._logged_out(out, err):
                raise TaoInferenceError(
                    "the brev CLI is not logged in on this host: log in once with `brev login`, or export %s (or give "
                    "brev_api_token) and the collection logs it in the way `brev login --token` does, by writing the "
                    "CLI's credentials file itself, so the token is never on a command line" % ENV_TOKEN)
            raise TaoInferenceError("`brev %s` failed (exit %d): %s" % (" ".join(words), code, err[-500:] or "no message"))
        return out

    def _log_in(self):
        """Log the logged-out CLI in with the token (once per run): write its credentials file as
        ``brev login --token`` does (the token on no command line, in no environment), then ask the CLI
        (``brev ls``, read-only) whether it is logged in. A refused token puts the file back as it was."""
        if not self.api_token or self._login_tried:
            return False
        self._login_tried = True
        credentials = CredentialsFile(os.environ.get("HOME"))
        before = credentials.write(self.api_token)
        try:
            code, out, err = self._call(("ls", "--json"))
        except TaoInferenceError:
            credentials.put_back(before, self.api_token)
            raise
        if code == 0:
            self.logged_in_with_token = True
            return True
        credentials.put_back(before, self.api_token)
        if self._logged_out(out, err):
            raise TaoInferenceError(
                "Brev refused the token in %s (or brev_api_token): it is wrong, expired or revoked. Issue a new one "
                "(the Brev console's CLI login) and export it, or log in with `brev login`; the value is not shown, "
                "and the brev CLI's credentials file %s is as it was%s" % (
                    ENV_TOKEN, credentials.path,
                    "; note that this host has a Kubernetes service account token (%s), which the brev CLI uses "
                    "instead of its credentials file" % SERVICE_ACCOUNT_TOKEN
                    if os.path.exists(SERVICE_ACCOUNT_TOKEN) else ""))
        raise TaoInferenceError("logging the brev CLI in with %s failed: `brev ls` exited %d: %s; the credentials file "
                                "%s is as it was" % (ENV_TOKEN, code, err[-500:] or "no message", credentials.path))

    def instances(self):
        """The instances ``brev ls --json`` lists (a list of dicts). The CLI may print a line before the JSON
        (``no oauth found for token`` while its access token is one it cannot place)."""
        out = self._brev("ls", "--json")
        try:
            start = 0 if out.startswith("{") else out.index("\n{") + 1
            document = json.JSONDecoder().raw_decode(out, start)[0]
        except ValueError:
            raise TaoInferenceError("`brev ls --json` did not print JSON: %s" % out.strip()[:300])
        found = (document or {}).get("workspaces") if isinstance(document, dict) else None
        return [w for w in found or [] if isinstance(w, dict)]

    def _find(self, name, fresh=True):
        """The instance ``name`` (name or id) as ``brev ls`` lists it, or None. ``fresh=False`` takes a listing
        of the last few seconds (the readiness wait looks at the instance on every probe)."""
        if fresh or self._listed is None or time.monotonic() - self._listed[0] > LISTING_TTL:
            self._listed = (time.monotonic(), self.instances())
        for item in self._listed[1]:
            if name in (item.get("name"), item.get("id")):
                return item
        return None

    def _wait_running(self, name, deadline, created):
        """The instance once it is RUNNING (STARTING/DEPLOYING are waited for, STOPPED is started only with
        brev_start_stopped, the others are refused), then ``brev refresh`` (its SSH configuration)."""
        sleep, started, first = 0.2, False, not created
        while True:
            item = self._find(name, fresh=not first)  # the preflight's listing of a moment ago, the first time
            first = False
            if item is None:
                listed = ", ".join(sorted(i.get("name") or "?" for i in self.instances())) or "none"
                raise TaoInferenceError("Brev instance %s does not exist (instances: %s)" % (name, listed))
            status = item.get("status")
            if status == "RUNNING":
                self._brev("refresh")
                return item
            if status == "STOPPED" and not created and not started:
                if not self.start_stopped:
                    raise TaoInferenceError("Brev instance %s is STOPPED: start it (`brev start %s`) or set "
                                            "brev_start_stopped: true to let the collection start it" % (name, name))
                self._brev("start", item.get("id") or name, "--detached")
                started = True
            elif status not in ON_THE_WAY and not (status in ("STOPPED", "STOPPING") and started):
                raise TaoInferenceError("Brev instance %s is %s, not RUNNING; the service cannot start there%s"
                                        % (name, status, " (it is being deleted)" if status == "DELETING" else ""))
            if time.monotonic() >= deadline:
                raise TaoInferenceError("Brev instance %s was not RUNNING within wait_timeout (it is %s)"
                                        % (name, status))
            time.sleep(min(sleep, max(0.0, deadline - time.monotonic())))
            sleep = min(sleep * 2, 2.0)

    # -- the engine on the instance ------------------------------------------------------
    def _target(self, name):
        return SSHTarget(name, key_path=self.key_path, config=self.ssh_config, what="the Brev instance")

    def _address(self, name):
        """The instance's address, as Brev's SSH configuration gives it (``ssh -G``): never localhost."""
        return self._target(name).resolved_host()

    def _engine(self, name, bind=None):
        if name not in self._engines:
            self._engines[name] = LocalDockerDriver(docker_host="ssh://%s" % name, pull=self.pull,
                                                    ssh_key_path=self.key_path, ssh_config=self.ssh_config)
        engine = self._engines[name]
        engine.bind_address = bind
        return engine

    def _instance_of(self, spec):
        return spec.platform_options.get("instance") or self.instance

    def recorded_connection(self, connection):
        recorded = dict(connection)
        if not recorded.get("instance"):
            # The instance this start will create: named now, so that the entry written before the start
            # already says where it runs.
            self._new_name = self._new_name or "tao-%s" % uuid.uuid4().hex[:16]
            recorded["instance"] = self._new_name
        return recorded

    # -- interface -------------------------------------------------------------------
    def port_scope(self, spec):
        # A tunnel listens on this machine; a direct port is the instance's own.
        if spec.platform_options["expose"] == "tunnel":
            return "local"
        given = self._instance_of(spec)
        item = self._find(given, fresh=False) if given else None
        return "brev:%s" % ((item or {}).get("name") or given or self._new_name or "new")  # by name, not id

    def port_is_free(self, spec, port):
        if spec.platform_options["expose"] == "tunnel":
            return port_is_free(port, addresses=["127.0.0.1"])
        return True  # the instance's engine refuses a taken port; the start then tries another

    def preflight(self, spec, report=True):
        """The CLI answers and is logged in; an instance given is RUNNING (or will be) and its Docker engine
        answers. Changes nothing."""
        instances = self.instances()
        name = self._instance_of(spec)
        facts = {"instances": sorted(i.get("name") for i in instances if i.get("name")),
                 "brev_logged_in_with_token": self.logged_in_with_token}
        if name is None:
            facts["instance"] = None
            return facts
        self._listed = (time.monotonic(), instances)
        item = next((i for i in instances if name in (i.get("name"), i.get("id"))), None)
        if item is None:
            raise TaoInferenceError("Brev instance %s does not exist (instances: %s)"
                                    % (name, ", ".join(facts["instances"]) or "none"))
        facts.update(instance=item.get("name"), instance_status=item.get("status"),
                     instance_type=item.get("instance_type"), gpu=item.get("gpu"))
        if item.get("status") == "STOPPED" and not self.start_stopped:
            raise TaoInferenceError("Brev instance %s is STOPPED: start it (`brev start %s`) or set brev_start_stopped: "
                                    "true" % (name, name))
        if (report or spec.num_gpus > 0) and item.get("status") == "RUNNING":
            self._brev("refresh")
            engine = self._engine(item.get("name"))
            info = engine._call(engine.engine.info, "read the engine's info")  # pylint: disable=protected-access
            facts["engine"] = "Docker %s (API %s) on %s" % (info.get("ServerVersion"), engine.engine.api_version,
                                                            item.get("name"))
            facts["runtimes"] = sorted(info.get("Runtimes") or {})
            facts["address"] = self._address(item.get("name"))
            if spec.num_gpus > 0 and "nvidia" not in facts["runtimes"]:
                raise TaoInferenceError("num_gpus=%d needs the NVIDIA container runtime, but the Docker engine on Brev "
                                        "instance %s has none (runtimes: %s); choose a GPU instance, or num_gpus: 0"
                                        % (spec.num_gpus, item.get("name"), ", ".join(facts["runtimes"]) or "none"))
        return facts

    def start(self, launch):
        deadline = time.monotonic() + launch.timeout
        spec, options = launch.spec, launch.spec.platform_options
        self.secret_names = tuple(launch.secret_env)
        name = self._instance_of(spec)
        created = name is None or self._made  # a start tried again (another port) keeps what it made
        if created:
            name = self._new_name or self.recorded_connection({})["instance"]
            self.instance = name  # from now on this driver reaches (and a failed start removes) that instance
        if created and not self._made:
            words = ["create", name, "--detached"]
            if options.get("instance_type"):
                words += ["--type", options["instance_type"]]
            if options.get("gpu_name"):
                words += ["--gpu-name", options["gpu_name"]]
            launch.on_submitted({"brev_created": True, "brev_expose": options["expose"]})
            self._made = True
            try:
                self._brev(*words, timeout=max(CLI_TIMEOUT, launch.timeout))
            except TaoInferenceError as exc:
                if "already exists" in exc.msg:  # someone else's instance: never this service's to delete
                    self._made = False
                    launch.on_submitted({"brev_created": False})
                    raise TaoInferenceError("a Brev instance named %s exists already: it is not one this start made, "
                                            "so it is left alone; start again" % name)
                raise
            made = self._find(name)
            if made is not None:
                launch.on_submitted({"brev_instance_id": made.get("id")})
        item = self._wait_running(name, deadline, created)
        name = item.get("name") or name
        fields = {"brev_instance_id": item.get("id"), "brev_created": created, "brev_expose": options["expose"],
                  "brev_logged_in_with_token": self.logged_in_with_token}
        launch.on_submitted(fields)
        address = self._address(name)
        fields["brev_address"] = address
        tunnel = options["expose"] == "tunnel"
        bind = "127.0.0.1" if tunnel else options.get("bind_address") or address
        engine = self._engine(name, bind)
        engine.prepare(spec)
        if tunnel:
            # On the instance's loopback, at a port its engine picks; the local end is host_port.
            local_port, launch.host_port = launch.host_port, None
            try:
                started = engine.start(launch)
            finally:
                launch.host_port = local_port
            remote_port = engine.published_port(launch.job_id)
        else:
            started = engine.start(launch)
            remote_port = launch.host_port
        fields.update(container_id=started["container_id"], docker_url=started["docker_url"],
                      host_port=launch.host_port, brev_port=remote_port)
        if tunnel:
            try:
                pid, start_time = open_tunnel(self._target(name), launch.host_port, "127.0.0.1", remote_port)
            except TaoInferenceError as exc:
                engine.stop({"job_id": launch.job_id})
                if "already in use" in exc.msg:
                    raise PortTaken(launch.host_port)
                raise
            fields.update(tunnel_pid=pid, tunnel_start_time=start_time,
                          host_url="http://localhost:%d" % launch.host_port)
        else:
            fields["host_url"] = "http://%s:%d" % ("[%s]" % address if ":" in address else address, launch.host_port)
        return fields

    def _tunnel(self, entry):
        if entry.get("brev_expose") != "tunnel" or not entry.get("tunnel_pid") or \
                not isinstance(entry.get("host_port"), int) or not isinstance(entry.get("brev_port"), int):
            return None
        return entry["tunnel_pid"], entry.get("tunnel_start_time"), \
            forward_spec(entry["host_port"], "127.0.0.1", entry.get("brev_port") or 0)

    def status(self, entry):
        name = self.instance  # as the entry recorded it (service.trusted_connection)
        item = self._find(name, fresh=False) if name else None
        if item is None:
            return PlatformStatus(PlatformStatus.MISSING, "Brev instance %s is gone" % name)
        extra = {"brev_instance": item.get("name"), "brev_status": item.get("status")}
        if item.get("status") not in ("RUNNING", "UNHEALTHY"):  # UNHEALTHY: running, with a health warning
            # An instance made for the service is never taken for gone while it exists: only state=absent
            # deletes it (a prune that dropped its entry would leave it running, unrecorded).
            pending = item.get("status") in ON_THE_WAY or self._made_here(entry, item)
            return PlatformStatus(PlatformStatus.PENDING if pending else PlatformStatus.EXITED,
                                  "Brev instance %s is %s" % (name, item.get("status")), extra=extra)
        status = self._engine(item.get("name")).status(entry)
        status.extra.update(extra)
        tunnel = self._tunnel(entry)
        if status.running and tunnel is not None and not tunnel_alive(*tunnel):
            status.broken = "tunnel_down"
        return status

    def _listed_name(self, fresh=False):
        """The instance's name as ``brev ls`` lists it (the entry may record its id), or None when it is not
        listed: nothing is ever reached by a name the listing does not have."""
        item = self._find(self.instance, fresh=fresh) if self.instance else None
        return item.get("name") if item is not None and item.get("status") in ("RUNNING", "UNHEALTHY") else None

    def logs(self, entry, lines=40, secrets=None):
        try:
            name = self._listed_name()
            return self._engine(name).logs(entry, lines, secrets) if name else ""
        except TaoInferenceError:
            return ""

    def release(self, entry):
        tunnel = self._tunnel(entry)
        return bool(tunnel) and close_tunnel(*tunnel)

    def repair(self, entry):
        tunnel = self._tunnel(entry)
        if tunnel is None or tunnel_alive(*tunnel):
            return {}
        name = self._listed_name(fresh=True)
        if name is None:
            raise TaoInferenceError("Brev instance %s is not RUNNING: its tunnel cannot be re-opened" % self.instance)
        pid, start_time = open_tunnel(self._target(name), entry["host_port"], "127.0.0.1", entry["brev_port"])
        return {"tunnel_pid": pid, "tunnel_start_time": start_time}

    def _made_here(self, entry, item):
        """True when ``item`` is the instance the collection created for ``entry``'s service: the entry says
        it made one, under this very name (recorded where it runs), with the id it recorded (or, when the
        start was cut off before the id was recorded, a name of the kind it gives)."""
        if entry.get("brev_created") is not True or item is None:
            return False
        recorded = (entry.get("connection") or {}).get("instance")
        if recorded not in (item.get("name"), item.get("id")):
            return False
        if entry.get("brev_instance_id"):
            return entry["brev_instance_id"] == item.get("id")
        return MADE.fullmatch(item.get("name") or "") is not None

    def stop(self, entry):
        """Remove the container (only ours), close the tunnel, and delete the instance if the collection
        created it for this service (see :meth:`_made_here`); deleting it removes the container too."""
        name = self.instance  # as the entry recorded it (service.trusted_connection)
        self.secret_names = tuple(entry.get("secret_env") or ())
        stopped = self.release(entry)
        item = self._find(name) if name else None
        made = self._made_here(entry, item)
        status = (item or {}).get("status")
        if status in ("RUNNING", "UNHEALTHY"):
            try:
                self._brev("refresh")
                stopped = self._engine(item.get("name")).stop(entry) or stopped
            except TaoInferenceError:
                if not made:
                    raise
        elif item is not None and not made and status != "DELETING":
            raise TaoInferenceError("Brev instance %s is %s, so the service's container on it cannot be removed: start "
                                    "the instance (`brev start %s`) and stop the service again" % (name, status, name))
        if made and status != "DELETING":
            self._brev("delete", item.get("id") or name)
            stopped = True
        return stopped

    def find(self, name=None):
        if not self.instance:
            return []
        item = self._find(self.instance)
        if item is None or item.get("status") != "RUNNING":
            return []
        self._brev("refresh")
        return self._engine(item.get("name")).find(name)

    def close(self):
        for engine in self._engines.values():
            engine.close()
