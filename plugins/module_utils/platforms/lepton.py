# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""lepton: the service runs as a DGX Cloud Lepton endpoint (a deployment), reached at its external URL.

Everything goes through the workspace's REST API
(``https://gateway.dgxc-lepton.nvidia.com/api/v2/workspaces/<id>``, or ``lepton_workspace_url``) with
``httpx``, authenticated by the workspace token. A batch job has no external URL for a container port,
so the service is a deployment. For a service the driver creates and owns, all named after it:

* one user secret per secret variable, ``tao-<job_id hex>-<NAME>`` (private, tagged ``tao.inference``
  and ``tao.inference.job_id=<job_id>``): the values go to Lepton's secret store only, and the
  deployment refers to them with ``value_from.secret_name_ref``;
* the deployment: the service's ``name`` made a Lepton name (else ``tao-<job_id hex>``), running the
  image with ``/bin/bash -c <inner command>`` on ``resource_shape`` (optionally in a dedicated node
  group, looked up by name), ``lepton_replicas`` fixed replicas, the container variables, shared
  memory, mounts and the image pull secret; Lepton's TCP health check on port 8080 after
  ``lepton_initial_delay_seconds``; and the endpoint's access: the workspace token
  (``WORKSPACE_TOKEN``, the default), a token of its own, or none. With a token, Lepton's gateway
  removes the ``Authorization`` header before a request reaches the container.

Every deployment carries ``tao.inference/*`` labels (managed-by, job-id, name, network-arch,
fingerprint, the host, and the registry path in base32 chunks, since label values hold no ``/``).
Only deployments labelled as ours for the asked job_id, and secrets with our name prefix for that
job_id (and our tag), are ever deleted.

A start waits, within the one deadline, until Lepton reports the deployment ``Ready`` (its replicas run
and their port answers) and its external endpoint is there; a replica that cannot be placed
(``NoCapacity``), an image that cannot be pulled or a configuration Lepton rejects (``ConfigError``,
``SystemError``) or a container that exits ends the start at once, with the replicas' states, the recent
events and the last log lines. The module's own readiness wait then reads the TAO server's readiness
route through the external endpoint, with the endpoint's token.

The workspace's id, URL and token come from this run only (options, else ``LEPTON_WORKSPACE_ID``,
``LEPTON_WORKSPACE_URL``, ``LEPTON_WORKSPACE_TOKEN``), never from a registry entry: an entry records
the workspace and API URL its service lives in, and a run reaching another one refuses to look or stop.
The token never goes to an ``http://`` URL other than loopback, redirects are not followed, and answers
are masked of the tokens before they appear in a message.
"""

import base64
import hashlib
import ipaddress
import os
import re
import time

from urllib.parse import quote, urlsplit

from ansible_collections.tao.inference.plugins.module_utils import catalog, readiness
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.platforms.base import (
    LABEL_PREFIX, Driver, PlatformStatus, check_secret_length, mask,
)
from ansible_collections.tao.inference.plugins.module_utils.spec import parse_size
from ansible_collections.tao.inference.plugins.module_utils.trust import check_http_url, is_loopback, is_token, is_uuid

GATEWAY = "https://gateway.dgxc-lepton.nvidia.com"
API_PATH = "/api/v2/workspaces/"
ENV_ID = "LEPTON_WORKSPACE_ID"
ENV_TOKEN = "LEPTON_WORKSPACE_TOKEN"
ENV_URL = "LEPTON_WORKSPACE_URL"
ENV_ENDPOINT_TOKEN = "LEPTON_ENDPOINT_TOKEN"
AUTH_MODES = ("workspace_token", "endpoint_token", "none")
WORKSPACE_TOKEN_REF = "WORKSPACE_TOKEN"
RESERVED_ENV = ("LEPTON_WORKSPACE_ID", "LEPTON_DEPLOYMENT_NAME", "LEPTON_JOB_NAME", "LEPTON_RESOURCE_ACCELERATOR_TYPE",
                "LEPTON_WORKSPACE_ORIGIN_URL")

MANAGED_BY = "tao.inference/managed-by"
LABEL_JOB_ID = "tao.inference/job-id"
LABEL_NAME = "tao.inference/name"
LABEL_NAME_B32 = "tao.inference/name-b32"
LABEL_ARCH = "tao.inference/network-arch"
LABEL_FINGERPRINT = "tao.inference/fingerprint"
LABEL_HOST = "tao.inference/host"
LABEL_REGISTRY = "tao.inference/registry-%d"
LABEL_REGISTRY_SHA = "tao.inference/registry-sha256"
REGISTRY_CHUNKS = 8
SECRET_TAG = "tao.inference"
ANSWER_LIMIT = 16 * 1024 * 1024  # bytes of one API answer at most (a list of every deployment fits)

PORT = catalog.CONTAINER_PORT
_TERMINAL = ("NoCapacity", "ConfigError", "SystemError")
_GONE_STATES = ("Deleting", "Stopping", "Stopped", "Error")
_POLL_MAX = 1.0  # seconds between looks at a starting deployment, at most (the first come sooner)
_REPLICA_CHECK = 0.5  # seconds between looks at a starting deployment's replicas (readiness, terminations)
STOP_WAIT = 120  # seconds a stop waits for the deployment to be gone
_LOG_BYTES = 64 * 1024

# Deployment names as the API takes them: a lowercase letter, then lowercase letters, digits and '-' (not
# last), 36 characters at most (the rule leptonai checks job names with).
_NAME = re.compile(r"[a-z](?:[a-z0-9-]{0,34}[a-z0-9])?")
_WORKSPACE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_SHAPE = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")
_NODE_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_PULL_SECRET = re.compile(r"[a-z0-9][a-z0-9.-]{0,252}")
_VOLUME = re.compile(r"node-local|node-[a-z0-9]+:[a-z0-9][a-z0-9-]{0,62}")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def deployment_name(spec, job_id):
    """The deployment's name: the service's ``name`` made a Lepton name (lowercase, '-' for anything
    else, a letter first, 36 characters at most), else ``tao-<the job_id's 32 hex digits>``."""
    if spec.name:
        base = re.sub(r"[^a-z0-9-]+", "-", spec.name.lower()).strip("-")
        if not base[:1].isalpha():
            base = "tao-" + base
        return base[:36].rstrip("-")
    return "tao-" + job_id.replace("-", "")


def secret_name(job_id, variable):
    """The Lepton secret holding one secret variable of service ``job_id``."""
    return "tao-%s-%s" % (job_id.replace("-", ""), variable)


def _b32(text):
    return base64.b32encode(text.encode("utf-8")).decode("ascii").rstrip("=").lower()


def _unb32(text):
    try:
        return base64.b32decode(text.upper() + "=" * (-len(text) % 8)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


def _label_value(value):
    return value if isinstance(value, str) and len(value) <= 63 and _LABEL_VALUE.fullmatch(value) else None


def workspace_problem(value):
    return None if isinstance(value, str) and _WORKSPACE.fullmatch(value) else \
        "is not a Lepton workspace id (lower-case letters, digits and '-')"


def api_url_problem(value):
    """Why ``value`` is not a workspace API URL the token may be sent to, or None."""
    try:
        check_http_url(value, "lepton_workspace_url")
    except TaoInferenceError:
        return "is not an http(s)://host[:port]/path URL"
    parts = urlsplit(value)
    if parts.scheme != "https" and not is_loopback(parts.hostname or ""):
        return "is plain http to another machine: the workspace token would cross the network in clear"
    return None


def _check(value, pattern, option, example):
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise TaoInferenceError("%s %r is not valid (e.g. %s)" % (option, value, example))
    return value


def _check_mounts(items):
    """``FROM_PATH:MOUNT_PATH:VOLUME`` strings (the ``lep`` CLI's --mount) as Lepton mounts."""
    mounts = []
    for item in items or []:
        parts = item.split(":", 2) if isinstance(item, str) else []
        if len(parts) != 3 or not parts[0].startswith("/") or not parts[1].startswith("/") \
                or not _VOLUME.fullmatch(parts[2]) or _CONTROL.search(item) or "," in item:
            raise TaoInferenceError(
                "lepton_mounts entry %r is not FROM_PATH:MOUNT_PATH:VOLUME with absolute paths and VOLUME node-local "
                "or node-<type>:<storage> (e.g. /shared/models:/models:node-nfs:lepton-shared-fs)" % (item,))
        if ".." in parts[0].split("/") or ".." in parts[1].split("/"):
            raise TaoInferenceError(
                "lepton_mounts entry %r has a '..' in a path: give each path as it is, without '..' (a mount must "
                "not reach above the folder it names)" % (item,))
        mounts.append({"path": parts[0], "mount_path": parts[1], "from": parts[2]})
    return mounts


def _check_allowlist(items):
    result = []
    for item in items or []:
        try:
            result.append(str(ipaddress.ip_network(item, strict=False)))
        except (TypeError, ValueError):
            raise TaoInferenceError("lepton_ip_allowlist entry %r is not an IP address or CIDR block" % (item,))
    return result


def _when(event):
    return event.get("last_observed_time") or ""


class LeptonError(TaoInferenceError):
    """The API answered with an error (``status`` is its HTTP status, 0 when it was not reached)."""

    def __init__(self, msg, status=0, code=None, message=""):
        super(LeptonError, self).__init__(msg)
        self.status = status
        self.code = code or ""
        self.message = message


class LeptonDriver(Driver):
    """Driver for a DGX Cloud Lepton workspace (a deployment and its secrets per service)."""

    name = "lepton"
    OPTIONS = dict(
        lepton_workspace_id=dict(type="str"),
        lepton_workspace_token=dict(type="str", no_log=True),
        lepton_workspace_url=dict(type="str"),
        lepton_validate_certs=dict(type="bool", default=True),
        lepton_api_timeout=dict(type="float", default=30),
        resource_shape=dict(type="str"),
        dedicated_node_group=dict(type="str"),
        lepton_replicas=dict(type="int", default=1),
        lepton_image_pull_secret=dict(type="str", no_log=False),  # the name of a registry credential, not a secret
        lepton_endpoint_auth=dict(type="str", choices=list(AUTH_MODES), default="workspace_token"),
        lepton_endpoint_token=dict(type="str", no_log=True),
        lepton_ip_allowlist=dict(type="list", elements="str"),
        lepton_mounts=dict(type="list", elements="str"),
        lepton_initial_delay_seconds=dict(type="int", default=600),
    )
    # Where a service runs, as this run's options name it. Never taken from a registry entry (FILE_CONNECTION:
    # a recorded value must equal the run's), so an entry cannot send the workspace token anywhere; nothing is
    # recorded there (recorded_connection): the workspace and API URL an entry records are checked instead
    # against the run's, whether options or the environment named them (_check_entry).
    CONNECTION = {"workspace_id": "lepton_workspace_id", "workspace_url": "lepton_workspace_url"}
    FILE_CONNECTION = ("workspace_id", "workspace_url")
    CONNECTION_KINDS = {"workspace_id": workspace_problem, "workspace_url": api_url_problem}
    ENTRY_FIELDS = {"lepton_deployment": lambda v: None if isinstance(v, str) and _NAME.fullmatch(v) else
                    "is not a Lepton deployment name",
                    "lepton_workspace": workspace_problem, "lepton_api": api_url_problem,
                    "endpoint_auth": readiness.endpoint_auth_problem}
    # Where the token an endpoint takes comes from (read by readiness.endpoint_headers): name -> option.
    ENDPOINT_TOKENS = {ENV_TOKEN: "lepton_workspace_token", ENV_ENDPOINT_TOKEN: "lepton_endpoint_token"}
    EXECUTION_BACKEND = "lepton"

    @classmethod
    def spec_options(cls, params, environ):
        """What shapes the deployment; where it runs (the workspace) and the tokens do not."""
        if params.get("volumes"):
            raise TaoInferenceError("volumes are folders of the host that runs the container, which Lepton does not "
                                    "give: mount Lepton storage with lepton_mounts (FROM_PATH:MOUNT_PATH:VOLUME, e.g. "
                                    "/shared/models:/models:node-nfs:lepton-shared-fs)")
        if params.get("host_port") is not None:
            raise TaoInferenceError("host_port does not apply to platform lepton: the service is reached at the "
                                    "endpoint's own URL")
        for variable in list((params.get("env") or {}).keys()) + list(params.get("secret_env") or []):
            if str(variable) in RESERVED_ENV:
                raise TaoInferenceError("%s is set by Lepton itself (reserved: %s); remove it from env/secret_env"
                                        % (variable, ", ".join(RESERVED_ENV)))
        shape = params.get("resource_shape")
        shape = _check(shape.lower() if isinstance(shape, str) else shape, _SHAPE, "resource_shape",
                       "gpu.1xh100-sxm or cpu.small")
        replicas = params.get("lepton_replicas")
        replicas = 1 if replicas is None else replicas
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 64:
            raise TaoInferenceError("lepton_replicas must be a whole number from 1 to 64, got %r" % (replicas,))
        delay = params.get("lepton_initial_delay_seconds")
        delay = 600 if delay is None else delay
        if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= 86400:
            raise TaoInferenceError("lepton_initial_delay_seconds must be from 0 to 86400, got %r" % (delay,))
        auth = params.get("lepton_endpoint_auth") or "workspace_token"
        if auth not in AUTH_MODES:
            raise TaoInferenceError("lepton_endpoint_auth %r is not one of %s" % (auth, ", ".join(AUTH_MODES)))
        if auth == "endpoint_token" and not (params.get("lepton_endpoint_token") or environ.get(ENV_ENDPOINT_TOKEN)):
            raise TaoInferenceError("lepton_endpoint_auth endpoint_token needs the token: export %s (or give "
                                    "lepton_endpoint_token)" % ENV_ENDPOINT_TOKEN)
        return {"resource_shape": shape,
                "dedicated_node_group": _check(params.get("dedicated_node_group"), _NODE_GROUP, "dedicated_node_group",
                                               "my-h100-group"),
                "replicas": replicas,
                "image_pull_secret": _check(params.get("lepton_image_pull_secret"), _PULL_SECRET,
                                            "lepton_image_pull_secret", "ngc-registry"),
                "endpoint_auth": auth,
                "ip_allowlist": _check_allowlist(params.get("lepton_ip_allowlist")),
                "mounts": _check_mounts(params.get("lepton_mounts")),
                "initial_delay_seconds": delay}

    @classmethod
    def from_options(cls, connection, params):
        """The driver of the workspace this run names (options, else the LEPTON_* environment). The
        fallbacks are read here, not by the argument spec, so exported LEPTON_* variables never count as
        options given to another platform."""
        workspace = connection.get("workspace_id") or os.environ.get(ENV_ID)
        if not workspace:
            raise TaoInferenceError("platform lepton needs the workspace: give lepton_workspace_id or export %s"
                                    % ENV_ID)
        if isinstance(workspace, str) and ":" in workspace:  # never shown: it may hold a token
            raise TaoInferenceError(
                "the workspace id (lepton_workspace_id or %s) holds a ':': a credential string <id>:<token>, as "
                "'lep login -c' takes? Give the id alone there and the token in %s (or lepton_workspace_token)"
                % (ENV_ID, ENV_TOKEN))
        problem = workspace_problem(workspace)
        if problem:
            raise TaoInferenceError("lepton_workspace_id %r %s" % (workspace, problem))
        url = (connection.get("workspace_url") or os.environ.get(ENV_URL) or GATEWAY + API_PATH + workspace).rstrip("/")
        problem = api_url_problem(url)
        if problem:
            raise TaoInferenceError("lepton_workspace_url %r %s" % (url, problem))
        named = re.search(r"/workspaces/([^/]+)$", urlsplit(url).path)
        if named and named.group(1) != workspace:
            raise TaoInferenceError("lepton_workspace_url %s names workspace %s, not %s: give the URL of workspace %s"
                                    % (url, named.group(1), workspace, workspace))
        timeout = params.get("lepton_api_timeout") or 30
        if not 0 < timeout <= 3600:
            raise TaoInferenceError("lepton_api_timeout must be more than 0 and at most 3600 seconds, got %s" % timeout)
        validate = params.get("lepton_validate_certs")
        token = params.get("lepton_workspace_token") or os.environ.get(ENV_TOKEN) or None
        endpoint_token = params.get("lepton_endpoint_token") or os.environ.get(ENV_ENDPOINT_TOKEN) or None
        for what, value in (("lepton_workspace_token (%s)" % ENV_TOKEN, token),
                            ("lepton_endpoint_token (%s)" % ENV_ENDPOINT_TOKEN, endpoint_token)):
            if value is not None and not is_token(value):
                raise TaoInferenceError("%s holds a character a token never has (a space, a newline or another "
                                        "control character, e.g. from a file read as it is): strip it; the value "
                                        "is not shown" % what)
            if value:
                check_secret_length(value, what, "no Lepton token is: give the one the workspace issued")
        return cls(workspace, url, token, endpoint_token=endpoint_token,
                   api_timeout=timeout, validate_certs=True if validate is None else bool(validate))

    def __init__(self, workspace, url, token, endpoint_token=None, api_timeout=30, validate_certs=True):
        self.workspace = workspace
        self.url = url
        self.token = token
        self.endpoint_token = endpoint_token
        self.api_timeout = api_timeout
        self.validate_certs = validate_certs
        self._http = None
        self._node_groups = {}
        self._workspace_checked = False

    def recorded_connection(self, connection):
        return dict((key, None) for key in self.CONNECTION)

    # -- the API -------------------------------------------------------------------------
    def _secrets(self, extra=None):
        """Values no message may show: the tokens (and ``extra``, a service's secret values)."""
        values = dict(extra or {})
        for key, value in (("workspace token", self.token), ("endpoint token", self.endpoint_token)):
            if value:
                values[key] = value
        return values

    def _client(self):
        if self._http is None:
            if not self.token:
                raise TaoInferenceError("platform lepton needs the workspace token: export %s (or give "
                                        "lepton_workspace_token)" % ENV_TOKEN)
            import httpx  # pylint: disable=import-outside-toplevel

            headers = {"Authorization": "Bearer " + self.token, "Accept": "application/json",
                       "User-Agent": "tao.inference"}
            parts = urlsplit(self.url)
            if "dgxc" in (parts.hostname or ""):  # what the leptonai client sends to DGX Cloud gateways
                headers["Origin"] = "%s://%s" % (parts.scheme, parts.netloc)
            # A proxy from the environment would see the token of a plain-http (loopback) URL in clear.
            self._http = httpx.Client(headers=headers, verify=self.validate_certs, follow_redirects=False,
                                      trust_env=parts.scheme == "https",
                                      timeout=httpx.Timeout(self.api_timeout, connect=min(self.api_timeout, 30)))
        return self._http

    def _request(self, method, path, what, body=None, params=None):  # pylint: disable=too-many-arguments
        """One API call; the decoded JSON answer. GET and DELETE are tried again (three times in all) when
        the gateway cannot be reached or answers 502-504; a create is not (it may have happened)."""
        import httpx  # pylint: disable=import-outside-toplevel

        client = self._client()
        tries = 3 if method in ("GET", "DELETE") else 1
        for attempt in range(tries):
            try:
                response = self._bounded(client, method, self.url + path, body, params, what)
            except httpx.HTTPError as exc:
                if attempt + 1 < tries:
                    time.sleep(0.2 * 2 ** attempt)
                    continue
                raise LeptonError("cannot reach the Lepton API at %s to %s: %s"
                                  % (self.url, what, mask(str(exc) or type(exc).__name__, self._secrets())))
            if response.status_code in (502, 503, 504) and attempt + 1 < tries:
                time.sleep(0.2 * 2 ** attempt)
                continue
            break
        if not 200 <= response.status_code <= 299:
            raise self._error(response, what, workspace_route=path == "/workspace")
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise LeptonError("the Lepton API at %s answered with something that is not JSON when asked to %s"
                              % (self.url, what), response.status_code)

    def _bounded(self, client, method, url, body, params, what):
        """The answer to one request, its body read up to :data:`ANSWER_LIMIT` bytes (a broken gateway's
        endless answer must not exhaust the module's memory)."""
        import httpx  # pylint: disable=import-outside-toplevel

        with client.stream(method, url, json=body, params=params) as response:
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > ANSWER_LIMIT:
                    raise LeptonError("the Lepton API at %s answered more than %d bytes when asked to %s; nothing of "
                                      "it was used" % (self.url, ANSWER_LIMIT, what), response.status_code)
                chunks.append(chunk)
            return httpx.Response(response.status_code, headers=response.headers, content=b"".join(chunks),
                                  request=response.request)

    def _error(self, response, what, workspace_route=False):
        status = response.status_code
        try:
            document = response.json()
        except ValueError:
            document = {}
        document = document if isinstance(document, dict) else {}
        code = str(document.get("code") or "")
        message = mask(" ".join(str(document.get("message") or response.text[:300] or "").split()), self._secrets())
        said = "%d %s%s" % (status, code + ": " if code else "", message)
        quota = "quota" in (code + " " + message).lower()
        if status == 401:
            text = ("Lepton refused the workspace token when asked to %s (%s). The token (%s, or "
                    "lepton_workspace_token) is wrong, expired or of another workspace: issue a new one in the "
                    "workspace's settings (Tokens) and export it" % (what, said, ENV_TOKEN))
        elif quota and 400 <= status < 500:
            text = ("Lepton refused to %s: the quota of workspace %s is used up (%s). Stop other workloads, ask for "
                    "more quota, or choose a smaller resource_shape or fewer lepton_replicas" % (what, self.workspace, said))
        elif status == 403:
            text = ("the workspace token may not %s in workspace %s (%s): it lacks the permission (a read-only or "
                    "expired token?)" % (what, self.workspace, said))
        elif status == 404 and (workspace_route or "workspace" in code.lower()):
            text = ("workspace %s was not found at %s (%s): check %s (lepton_workspace_id) and %s "
                    "(lepton_workspace_url)" % (self.workspace, self.url, said, ENV_ID, ENV_URL))
        elif status == 429:
            text = "Lepton is rate limiting this token (%s) when asked to %s; try again in a while" % (said, what)
        elif status >= 500:
            text = "Lepton failed to %s (%s); the service may be having trouble: try again" % (what, said)
        else:
            text = "Lepton could not %s: %s" % (what, said)
        return LeptonError(text, status, code, message)

    def _get(self, path, what):
        """GET ``path``; None when it is not there. A 404 counts as "not there" only once the workspace
        itself answers: a wrong workspace id or URL must never make a running service look gone."""
        try:
            return self._request("GET", path, what)
        except LeptonError as exc:
            if exc.status == 404:
                self._check_workspace()
                return None
            raise

    def _check_workspace(self):
        """The workspace answers (so a 404 means the object, not a wrong workspace or URL)."""
        if not self._workspace_checked:
            self._request("GET", "/workspace", "read workspace %s" % self.workspace)
            self._workspace_checked = True

    def _deployment(self, name):
        return self._get("/deployments/%s" % quote(name, safe=""), "read deployment %s" % name)

    def _list(self, path, what):
        found = self._request("GET", path, what)
        return found if isinstance(found, list) else []

    # -- names and labels ----------------------------------------------------------------------
    @staticmethod
    def labels(launch):
        """The deployment's labels: ours, the job_id, name, arch, fingerprint, host and registry path."""
        spec = launch.spec
        labels = {MANAGED_BY: "tao.inference", LABEL_JOB_ID: launch.job_id,
                  LABEL_ARCH: _label_value(spec.network_arch) or "other"}
        fingerprint = _label_value(launch.labels.get(LABEL_PREFIX + "fingerprint"))
        if fingerprint:
            labels[LABEL_FINGERPRINT] = fingerprint
        if spec.name:
            if _label_value(spec.name):
                labels[LABEL_NAME] = spec.name
            else:
                labels[LABEL_NAME_B32] = _b32(spec.name)
        host = _label_value(launch.labels.get(LABEL_PREFIX + "host"))
        if host:
            labels[LABEL_HOST] = host
        registry = launch.labels.get(LABEL_PREFIX + "registry")
        if registry:
            encoded = _b32(registry)
            chunks = [encoded[i:i + 63] for i in range(0, len(encoded), 63)]
            if len(chunks) <= REGISTRY_CHUNKS:
                labels.update((LABEL_REGISTRY % index, chunk) for index, chunk in enumerate(chunks))
            else:
                labels[LABEL_REGISTRY_SHA] = hashlib.sha256(registry.encode("utf-8")).hexdigest()[:63]
        return labels

    @staticmethod
    def _labels_of(deployment):
        """The deployment's labels as the service layer reads them (``tao.inference.*``)."""
        metadata = deployment.get("metadata") or {}
        labels = metadata.get("labels") or {}
        result = {LABEL_PREFIX + "managed-by": labels.get(MANAGED_BY), LABEL_PREFIX + "job_id": labels.get(LABEL_JOB_ID),
                  LABEL_PREFIX + "network_arch": labels.get(LABEL_ARCH),
                  "platform_job_id": metadata.get("id") or metadata.get("name")}
        name = labels.get(LABEL_NAME) or (_unb32(labels[LABEL_NAME_B32]) if labels.get(LABEL_NAME_B32) else None)
        chunks = []
        for index in range(REGISTRY_CHUNKS):
            if not labels.get(LABEL_REGISTRY % index):
                break
            chunks.append(labels[LABEL_REGISTRY % index])
        registry = _unb32("".join(chunks)) if chunks else None
        if labels.get(LABEL_REGISTRY_SHA):
            registry = "sha256:" + labels[LABEL_REGISTRY_SHA]  # never a path: such a deployment is not adopted
        for key, value in (("name", name), ("registry", registry), ("fingerprint", labels.get(LABEL_FINGERPRINT)),
                           ("host", labels.get(LABEL_HOST))):
            if value:
                result[LABEL_PREFIX + key] = value
        return result

    @staticmethod
    def _ours(deployment, job_id):
        labels = ((deployment or {}).get("metadata") or {}).get("labels") or {}
        return labels.get(MANAGED_BY) == "tao.inference" and labels.get(LABEL_JOB_ID) == job_id

    # -- request bodies --------------------------------------------------------------------------
    def secret_items(self, launch):
        """The user secrets of the service's secret variables (their values: only ever sent here)."""
        tags = [SECRET_TAG, "tao.inference.job_id=%s" % launch.job_id]
        return [{"name": secret_name(launch.job_id, variable), "value": value, "tags": list(tags),
                 "visibility": "private"} for variable, value in sorted(launch.secret_env.items())]

    def deployment_body(self, launch, node_group_id=None):
        """The deployment: one endpoint running the inner command, no secret value in it (an endpoint token
        of its own, with ``lepton_endpoint_auth: endpoint_token``, is Lepton's to hold)."""
        spec, options = launch.spec, launch.spec.platform_options
        name = deployment_name(spec, launch.job_id)
        envs = [{"name": key, "value": value} for key, value in sorted(launch.env.items())]
        envs += [{"name": key, "value_from": {"secret_name_ref": secret_name(launch.job_id, key)}}
                 for key in sorted(launch.secret_env)]
        requirement = {"resource_shape": options["resource_shape"], "min_replicas": options["replicas"],
                       "max_replicas": options["replicas"],
                       "shared_memory_size": max(1, parse_size(spec.shm_size) // (1024 * 1024))}
        if node_group_id:
            requirement["affinity"] = {"allowed_dedicated_node_groups": [node_group_id]}
        user = {"container": {"image": spec.image, "command": ["/bin/bash", "-c", launch.command],
                              "ports": [{"container_port": PORT, "protocol": "TCP"}]},
                "resource_requirement": requirement,
                "envs": envs,
                "health": {"liveness": {"initial_delay_seconds": options["initial_delay_seconds"],
                                        "tcp": {"port": PORT}}}}
        auth = options["endpoint_auth"]
        auth_config = {}
        if auth == "none":
            user["api_tokens"] = []
            user["allow_unauthenticated_access"] = True
        else:
            if auth == "workspace_token":
                user["api_tokens"] = [{"value_from": {"token_name_ref": WORKSPACE_TOKEN_REF}}]
            else:
                if not self.endpoint_token:
                    raise TaoInferenceError("lepton_endpoint_auth endpoint_token needs the token: export %s (or give "
                                            "lepton_endpoint_token)" % ENV_ENDPOINT_TOKEN)
                user["api_tokens"] = [{"value": self.endpoint_token}]
            # The gateway checks the token; the container never needs to see it.
            auth_config["lepton_workspace_token_auth"] = {"remove_authorization_header": True}
        if options.get("ip_allowlist"):
            auth_config["ip_allowlist"] = list(options["ip_allowlist"])
        if auth_config:
            user["auth_config"] = auth_config
        if options.get("image_pull_secret"):
            user["image_pull_secrets"] = [options["image_pull_secret"]]
        if options.get("mounts"):
            user["mounts"] = [dict(m) for m in options["mounts"]]
        return {"metadata": {"id": name, "name": name, "labels": self.labels(launch)}, "spec": user}

    # -- interface -----------------------------------------------------------------------------
    def _node_group_id(self, name):
        """The id of the dedicated node group called ``name`` (Lepton refers to node groups by id)."""
        if name not in self._node_groups:
            groups = self._list("/dedicated-node-groups", "list dedicated node groups")
            for group in groups:
                metadata = group.get("metadata") or {}
                if metadata.get("name") == name or metadata.get("id") == name:
                    self._node_groups[name] = group
                    break
            else:
                listed = ", ".join(sorted("%s (%s)" % ((g.get("metadata") or {}).get("name"),
                                                       (g.get("metadata") or {}).get("id")) for g in groups))
                raise TaoInferenceError("dedicated_node_group %s is not a node group of workspace %s; node groups there: "
                                        "%s" % (name, self.workspace, listed or "none"))
        return self._node_groups[name]["metadata"]["id"]

    def _shapes(self, node_group):
        params = {"node_groups": node_group} if node_group else None
        try:
            found = self._request("GET", "/shapes", "list resource shapes", params=params)
        except LeptonError as exc:
            if exc.status == 404:
                self._check_workspace()
                return None  # an API without the shapes route: the create says what it takes
            raise
        shapes = {}
        for item in found if isinstance(found, list) else []:
            spec = item.get("spec") or {}
            name = spec.get("name") or (item.get("metadata") or {}).get("name")
            if name:
                shapes.setdefault(name, spec)
        return shapes

    def preflight(self, spec, report=True):
        """The workspace answers to the token; the node group and the resource shape exist and the shape gives
        ``num_gpus`` GPUs; with ``report``, the workspace's state and quota, the pull secret and the free
        GPUs of the node group. Changes nothing."""
        options = spec.platform_options
        facts = {"workspace_id": self.workspace, "workspace_url": self.url}
        group_name = options.get("dedicated_node_group")
        group_id = self._node_group_id(group_name) if group_name else None
        if group_id:
            facts["dedicated_node_group"] = {"name": group_name, "id": group_id}
        shapes = self._shapes(group_name)
        shape = options.get("resource_shape")
        where = "node group %s" % group_name if group_name else "workspace %s" % self.workspace
        warnings = []
        if shapes is not None:
            facts["resource_shapes"] = sorted(shapes)
        if shape is None:
            text = ("platform lepton needs resource_shape, the shape each replica runs on; the shapes of %s: %s"
                    % (where, ", ".join(sorted(shapes or {})) or "unknown"))
            if not report:
                raise TaoInferenceError(text)
            warnings.append(text)
        elif shapes is not None and shape not in shapes:
            raise TaoInferenceError("resource_shape %s is not offered in %s; shapes there: %s%s"
                                    % (shape, where, ", ".join(sorted(shapes)) or "none",
                                       "" if group_name else " (GPU shapes may need dedicated_node_group)"))
        elif shapes is not None:
            gpus = shapes[shape].get("accelerator_num") or 0
            if int(gpus) != spec.num_gpus:
                raise TaoInferenceError("resource_shape %s gives %s GPU(s) to each replica but num_gpus is %d: set "
                                        "num_gpus to %s, or choose a shape with %d GPU(s)"
                                        % (shape, int(gpus), spec.num_gpus, int(gpus), spec.num_gpus))
        if not report:
            return facts
        info = self._request("GET", "/workspace", "read workspace %s" % self.workspace)
        self._workspace_checked = True
        facts["workspace_name"] = info.get("workspace_name")
        facts["workspace_state"] = info.get("workspace_state")
        if info.get("workspace_state") not in (None, "normal"):
            raise TaoInferenceError("workspace %s is %s: it runs no new deployment until it is back to normal"
                                    % (self.workspace, info.get("workspace_state")))
        quota = info.get("resource_quota") or {}
        facts["quota"] = quota
        if shape and shapes and shape in shapes and quota.get("limit"):
            need = dict((key, (shapes[shape].get(field) or 0) * options["replicas"])
                        for key, field in (("cpu", "cpu"), ("memory", "memory_in_mb"), ("accelerator_num", "accelerator_num")))
            for key, amount in sorted(need.items()):
                limit, used = quota["limit"].get(key), (quota.get("used") or {}).get(key) or 0
                if amount and limit is not None and used + amount > limit:
                    raise TaoInferenceError(
                        "the quota of workspace %s is too small for %d replica(s) of %s: they need %s %s, and %s of %s "
                        "are in use. Stop other workloads, ask for more quota, or choose a smaller shape"
                        % (self.workspace, options["replicas"], shape, amount, key, used, limit))
        pull = options.get("image_pull_secret")
        if pull:
            try:
                listed = self._list("/imagepullsecrets", "list image pull secrets")
                names = [(p.get("metadata") or {}).get("name") for p in listed if isinstance(p, dict)]
            except LeptonError as exc:
                if exc.status != 404:
                    raise
                warnings.append("cannot list image pull secrets here (%s); lepton_image_pull_secret %s is not checked"
                                % (exc.message or exc.status, pull))
            else:
                if pull not in names:
                    raise TaoInferenceError("lepton_image_pull_secret %s is not in workspace %s; pull secrets there: %s"
                                            % (pull, self.workspace, ", ".join(sorted(n for n in names if n)) or "none"))
                facts["lepton_image_pull_secret"] = pull
        elif spec.image.startswith("nvcr.io/"):
            warnings.append("image %s comes from nvcr.io: private NGC images need lepton_image_pull_secret (a registry "
                            "credential of the workspace for nvcr.io, user $oauthtoken)" % spec.image)
        if group_id and shape and shapes and shape in shapes:
            nodes = self._list("/dedicated-node-groups/%s/nodes" % quote(group_id, safe=""), "list the nodes of node "
                               "group %s" % group_name)
            free = [int(((n.get("spec") or {}).get("resource") or {}).get("gpu", {}).get("total") or 0)
                    - int(((n.get("spec") or {}).get("resource") or {}).get("gpu", {}).get("allocated") or 0)
                    for n in nodes]
            facts["dedicated_node_group"].update(nodes=len(nodes), free_gpus=free)
            need = int(shapes[shape].get("accelerator_num") or 0)
            if need and not any(f >= need for f in free):
                warnings.append("no node of node group %s has %d free GPU(s) now (free: %s): the service would wait "
                                "for capacity" % (group_name, need, free or "no nodes"))
        if warnings:
            facts["warnings"] = warnings
        return facts

    def start(self, launch):
        """Create the secrets and the deployment; wait until Lepton reports it ready with its external
        endpoint, within ``launch.timeout``."""
        deadline = time.monotonic() + launch.timeout
        options = launch.spec.platform_options
        if not options.get("resource_shape"):
            raise TaoInferenceError("platform lepton needs resource_shape, the shape each replica runs on (e.g. "
                                    "gpu.1xh100-sxm or cpu.small)")
        group = options.get("dedicated_node_group")
        body = self.deployment_body(launch, self._node_group_id(group) if group else None)
        name = body["metadata"]["name"]
        fields = {"lepton_deployment": name, "lepton_workspace": self.workspace, "lepton_api": self.url}
        # Recorded before anything is made: a start cut off after the secrets still says where they are.
        launch.on_submitted(dict(fields))
        secrets = self.secret_items(launch)
        if secrets:
            self._request("POST", "/usersecrets", "create the secrets of service %s (%s)"
                          % (launch.job_id, ", ".join(s["name"] for s in secrets)), body=secrets)
        created = self._create(body, launch)
        fields["platform_job_id"] = (created.get("metadata") or {}).get("id") or name
        launch.on_submitted(fields)
        deployment = self._wait_ready(fields["platform_job_id"], launch, deadline)
        url = ((deployment.get("status") or {}).get("endpoint") or {}).get("external_endpoint") or ""
        url = url.rstrip("/")
        try:
            check_http_url(url, "external_endpoint")
        except TaoInferenceError:
            self._fail(launch, fields["platform_job_id"], "deployment %s is ready but its external endpoint %r is no "
                       "http(s) URL" % (name, url))
        fields["host_url"] = url
        auth = options["endpoint_auth"]
        if auth != "none":
            source, token = (ENV_TOKEN, self.token) if auth == "workspace_token" else (ENV_ENDPOINT_TOKEN,
                                                                                       self.endpoint_token)
            fields["endpoint_auth"] = readiness.endpoint_auth(launch.job_id, url, source, token)
        return fields

    def _create(self, body, launch):
        name = body["metadata"]["name"]
        try:
            return self._request("POST", "/deployments", "create deployment %s" % name, body=body)
        except LeptonError as exc:
            if exc.status == 409:
                other = None
                try:
                    other = self._deployment(name)
                except LeptonError:
                    pass
                owner = self._labels_of(other or {})
                if self._ours(other, launch.job_id):
                    return other  # this very start made it (an answer lost on the way): it is ours
                if owner.get(LABEL_PREFIX + "managed-by") == "tao.inference":
                    elsewhere = owner.get(LABEL_PREFIX + "registry") != launch.labels.get(LABEL_PREFIX + "registry")
                    whose = "service %s of tao.inference%s" % (
                        owner[LABEL_PREFIX + "job_id"], " (another registry)" if elsewhere else "")
                else:
                    whose = "not made by tao.inference"
                state = ((other or {}).get("status") or {}).get("state")
                raise TaoInferenceError(
                    "a deployment named %s already exists in workspace %s (%s%s): give the service another name, or "
                    "stop that deployment first%s" % (name, self.workspace, whose,
                                                      ", %s" % state if state else "",
                                                      " (it is being deleted: try again in a moment)"
                                                      if state == "Deleting" else ""), job_id=launch.job_id)
            if exc.status == 400 and "shape" in exc.message.lower():
                shapes = self._shapes(launch.spec.platform_options.get("dedicated_node_group")) or {}
                raise TaoInferenceError("%s. Shapes offered: %s" % (exc.msg, ", ".join(sorted(shapes)) or "unknown"),
                                        job_id=launch.job_id)
            raise

    def _readiness(self, name):
        try:
            found = self._request("GET", "/deployments/%s/readiness" % quote(name, safe=""),
                                  "read the readiness of deployment %s" % name)
        except LeptonError as exc:
            if exc.status == 404:
                return {}
            raise
        return found if isinstance(found, dict) else {}

    def _terminations(self, name):
        try:
            found = self._request("GET", "/deployments/%s/termination" % quote(name, safe=""),
                                  "read the terminations of deployment %s" % name)
        except LeptonError as exc:
            if exc.status == 404:
                return {}
            raise
        return found if isinstance(found, dict) else {}

    def _wait_ready(self, name, launch, deadline):
        """The deployment once Lepton says it is Ready with an external endpoint; fails at once when a
        replica cannot run. The deployment is looked at 10 ms after the create, then a fifth less often each
        time up to once a second (a deployment up within a second is seen within milliseconds, a long start
        costs one call a second); its replicas' readiness and terminations every half second."""
        delay, replicas_seen = 0.01, time.monotonic()
        while True:
            deployment = self._deployment(name)
            if deployment is None:
                raise TaoInferenceError("deployment %s disappeared while it started (deleted by someone else?)" % name,
                                        job_id=launch.job_id)
            status = deployment.get("status") or {}
            state = status.get("state") or ""
            if state == "Ready" and (status.get("endpoint") or {}).get("external_endpoint"):
                return deployment
            if state in _GONE_STATES:
                self._fail(launch, name, "deployment %s is %s" % (name, state))
            remaining = deadline - time.monotonic()
            if time.monotonic() - replicas_seen < _REPLICA_CHECK and remaining > 0:
                time.sleep(min(delay, remaining))
                delay = min(delay * 1.2, _POLL_MAX)
                continue
            replicas_seen = time.monotonic()
            for replica, issues in sorted(self._readiness(name).items()):
                issue = (issues or [{}])[0]
                if issue.get("reason") in _TERMINAL:
                    self._fail(launch, name, "replica %s of deployment %s cannot run: %s: %s"
                               % (replica, name, issue["reason"], issue.get("message") or ""))
            for replica, ended in sorted(self._terminations(name).items()):
                if ended:
                    last = ended[-1]
                    self._fail(launch, name, "replica %s of deployment %s exited (exit code %s, %s)%s"
                               % (replica, name, last.get("exit_code"), last.get("reason") or "",
                                  ": " + last["message"] if last.get("message") else ""))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail(launch, name, "deployment %s was not ready within wait_timeout (state %s)"
                           % (name, state or "unknown"))
            time.sleep(min(delay, remaining))
            delay = min(delay * 1.2, _POLL_MAX)

    def _replica_states(self, name):
        states = []
        for replica, issues in sorted(self._readiness(name).items()):
            issue = (issues or [{}])[0]
            states.append("%s %s%s" % (replica, issue.get("reason") or "?",
                                       " (%s)" % issue["message"] if issue.get("message") else ""))
        return states

    def _events(self, name, limit=6):
        try:
            items = self._list("/deployments/%s/events" % quote(name, safe=""), "read the events of deployment %s" % name)
        except LeptonError:
            return []
        items.sort(key=_when)
        return ["%s %s: %s%s" % (e.get("type") or "", e.get("reason") or "",
                                 " ".join(str(e.get("note") or e.get("message") or "").split()),
                                 " (x%d)" % e["count"] if (e.get("count") or 1) > 1 else "") for e in items[-limit:]]

    def _fail(self, launch, name, problem):
        secrets = self._secrets(launch.secret_env)
        try:
            states = self._replica_states(name)
        except LeptonError:
            states = []
        events = self._events(name)
        logs = self._replica_logs(name, 15, launch.secret_env)
        text = problem.rstrip(".") + "."
        if states:
            text += " Replicas: " + "; ".join(states) + "."
        if events:
            text += " Recent events: " + " | ".join(events)
        if logs.strip():
            text += " Last container log lines:\n" + logs.strip()
        raise TaoInferenceError(mask(text, secrets), job_id=launch.job_id)

    # -- looking and stopping -------------------------------------------------------------------
    def _check_entry(self, entry):
        """Refuse to look at (or stop) a service of another workspace or API than this run's."""
        recorded, api = entry.get("lepton_workspace"), entry.get("lepton_api")
        if (recorded and recorded != self.workspace) or (api and api != self.url):
            raise TaoInferenceError(
                "service %s runs in Lepton workspace %s (API %s); this run reaches workspace %s (%s): give that "
                "workspace's lepton_workspace_id, lepton_workspace_url and token (or LEPTON_WORKSPACE_*) to look at "
                "or stop it" % (entry.get("job_id"), recorded, api or "?", self.workspace, self.url),
                job_id=entry.get("job_id"))

    @staticmethod
    def _name_of(entry):
        name = entry.get("lepton_deployment") or entry.get("platform_job_id")
        return name if isinstance(name, str) and _NAME.fullmatch(name) else None

    def status(self, entry):
        self._check_entry(entry)
        name = self._name_of(entry)
        deployment = self._deployment(name) if name else None
        if deployment is None or not self._ours(deployment, entry["job_id"]):
            return PlatformStatus(PlatformStatus.MISSING, "no deployment %s of tao.inference in workspace %s"
                                  % (name or "-", self.workspace))
        status = deployment.get("status") or {}
        state = status.get("state") or "Unknown"
        extra = {"lepton_state": state, "lepton_deployment": name}
        labels = self._labels_of(deployment)
        if state == "Ready":
            return PlatformStatus(PlatformStatus.RUNNING, "deployment %s Ready" % name, labels=labels, ident=name,
                                  extra=extra)
        if state in _GONE_STATES:
            return PlatformStatus(PlatformStatus.EXITED, "deployment %s is %s" % (name, state), labels=labels,
                                  ident=name, extra=extra)
        for replica, issues in sorted(self._readiness(name).items()):
            issue = (issues or [{}])[0]
            if issue.get("reason") in _TERMINAL:
                return PlatformStatus(PlatformStatus.EXITED, mask("replica %s cannot run: %s: %s" % (
                    replica, issue["reason"], issue.get("message") or ""), self._secrets()), labels=labels,
                    ident=name, extra=extra)
        for replica, ended in sorted(self._terminations(name).items()):
            if ended:  # not ready, and its container has exited: the server died
                last = ended[-1]
                return PlatformStatus(PlatformStatus.EXITED, mask("replica %s exited (exit code %s, %s): %s" % (
                    replica, last.get("exit_code"), last.get("reason"), last.get("message") or ""), self._secrets()),
                    last.get("exit_code"), labels=labels, ident=name, extra=extra)
        return PlatformStatus(PlatformStatus.PENDING, "deployment %s %s" % (name, state), labels=labels, ident=name,
                              extra=extra)

    def _replica_logs(self, name, lines, secrets):
        """The last ``lines`` of the log of the deployment's first replica, secrets and tokens masked ("" when
        it cannot be read: logs only explain a failure). The API streams a log; reading stops after a second
        without output, 64 KiB or five seconds."""
        import httpx  # pylint: disable=import-outside-toplevel

        try:
            replicas = self._list("/deployments/%s/replicas" % quote(name, safe=""), "list the replicas of %s" % name)
        except LeptonError:
            return ""
        ids = [r.get("id") or (r.get("metadata") or {}).get("id") for r in replicas]
        ids = [i for i in ids if isinstance(i, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}", i)]
        if not ids:
            return ""
        data = b""
        started = time.monotonic()
        try:
            with self._client().stream("GET", self.url + "/deployments/%s/replicas/%s/log" % (
                    quote(name, safe=""), quote(ids[0], safe="")), timeout=httpx.Timeout(10, read=1.0)) as response:
                if response.status_code != 200:
                    return ""
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) >= _LOG_BYTES or time.monotonic() - started > 5:
                        break
        except httpx.HTTPError:
            pass  # the stream went quiet (a read timeout) or broke: what came is the log
        text = data[-_LOG_BYTES:].decode("utf-8", "replace")
        return mask("\n".join(text.splitlines()[-int(lines):]), self._secrets(secrets))

    def logs(self, entry, lines=40, secrets=None):
        self._check_entry(entry)
        name = self._name_of(entry)
        return self._replica_logs(name, lines, secrets) if name else ""

    def _delete_secrets(self, job_id):
        """Delete the secrets of service ``job_id`` (its name prefix, and our tag where Lepton lists tags); True
        when there were some."""
        deleted = False
        prefix = secret_name(job_id, "")
        for item in self._list("/usersecrets", "list secrets"):
            secret = item.get("name") if isinstance(item, dict) else None
            tags = item.get("tags") if isinstance(item, dict) else None
            # The prefix holds the whole job_id; where Lepton lists tags, ours must be among them too.
            if isinstance(secret, str) and secret.startswith(prefix) and \
                    (tags is None or (isinstance(tags, list) and SECRET_TAG in tags)):
                try:
                    self._request("DELETE", "/usersecrets/%s" % quote(secret, safe=""), "delete secret %s" % secret)
                    deleted = True
                except LeptonError as exc:
                    if exc.status != 404:
                        raise
        return deleted

    def release(self, entry):
        """A service whose deployment is gone (deleted in the workspace, say): delete the secrets it left there,
        which hold the values. Only this service's (see :meth:`_delete_secrets`), only in its own workspace."""
        job_id = entry.get("job_id")
        if not is_uuid(job_id):
            return False
        self._check_entry(entry)
        return self._delete_secrets(job_id)

    def stop(self, entry):
        """Delete the service's deployment and its secrets: only a deployment labelled as ours for this job_id,
        and secrets with its name prefix (and our tag). True when something was there. Waits (a while) until
        the deployment is gone, so that its name is free again."""
        job_id = entry["job_id"]
        if not is_uuid(job_id):
            return False
        self._check_entry(entry)
        names = []
        name = self._name_of(entry)
        if name and self._ours(self._deployment(name), job_id):
            names.append(name)
        if not names:
            for deployment in self._list("/deployments", "list deployments"):
                if self._ours(deployment, job_id):
                    metadata = deployment.get("metadata") or {}
                    found = metadata.get("id") or metadata.get("name")
                    if isinstance(found, str) and _NAME.fullmatch(found):
                        names.append(found)
        stopped = False
        for found in names:
            try:
                self._request("DELETE", "/deployments/%s" % quote(found, safe=""), "delete deployment %s" % found)
                stopped = True
            except LeptonError as exc:
                if exc.status != 404:
                    raise
        stopped = self._delete_secrets(job_id) or stopped
        deadline = time.monotonic() + STOP_WAIT
        delay = 0.02
        for found in names:
            while True:
                current = self._deployment(found)
                if not self._ours(current, job_id):
                    break
                if time.monotonic() >= deadline:
                    state = ((current.get("status") or {}) if isinstance(current.get("status"), dict) else {}).get("state")
                    if state == "Deleting":
                        return True  # being deleted: Lepton finishes it
                    raise LeptonError("deployment %s is still there (%s) after it was deleted; delete it in the workspace "
                                      "and stop the service again" % (found, state or "no state"))
                time.sleep(delay)
                delay = min(delay * 1.2, _POLL_MAX)
        return stopped

    def find(self, name=None):
        found = []
        for deployment in self._list("/deployments", "list deployments"):
            labels = self._labels_of(deployment)
            if labels.get(LABEL_PREFIX + "managed-by") != "tao.inference" or not is_uuid(labels.get(LABEL_PREFIX + "job_id")):
                continue
            if name is not None and labels.get(LABEL_PREFIX + "name") != name:
                continue
            ident = labels.get("platform_job_id")
            if not (isinstance(ident, str) and _NAME.fullmatch(ident)):
                continue
            found.append(PlatformStatus(PlatformStatus.RUNNING, "deployment %s" % ident, labels=labels, ident=ident))
        return found

    def close(self):
        if self._http is not None:
            try:
                self._http.close()
            except Exception:  # pylint: disable=broad-except
                pass
            self._http = None
