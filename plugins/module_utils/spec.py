# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validated description of one inference service (platform-agnostic)."""

import hashlib
import json
import re

from ansible_collections.tao.inference.plugins.module_utils import catalog, trust
from ansible_collections.tao.inference.plugins.module_utils.platforms import drivers as platforms
from ansible_collections.tao.inference.plugins.module_utils.platforms.base import check_secret_length
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.image import resolve_image

_HF_PREFIX = catalog.SERVICE["model_path"]["hf_prefix"]
_ENV_NAME = trust.ENV_NAME
# registry[:port]/path[:tag][@digest]; never a leading '-' (a CLI would read it as an option).
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,511}")
_NAME = trust.SERVICE_NAME

# Options whose value never changes what runs, left out of the fingerprint.
_NOT_FINGERPRINTED = ("name", "image_source")


class ServiceSpec(object):
    """Everything needed to start a service, validated. Holds no secret value:
    ``secret_env`` holds variable *names*; values are read at start time."""

    FIELDS = (
        "name", "network_arch", "model_path", "platform", "num_gpus", "image", "image_source",
        "host_port", "env", "secret_env", "volumes", "model_key",
        "server_options", "shm_size", "platform_options",
    )

    def __init__(self, **values):
        for field in self.FIELDS:
            setattr(self, field, values.get(field))

    def as_dict(self):
        return dict((field, getattr(self, field)) for field in self.FIELDS)

    @property
    def is_hf_model(self):
        return self.model_path.startswith(_HF_PREFIX)

    def shape(self):
        """Everything that shapes the running service, as plain JSON data (it holds no secret value:
        secrets are names). Kept in the registry entry, so a recreate can say what changed."""
        data = dict((k, v) for k, v in self.as_dict().items() if k not in _NOT_FINGERPRINTED)
        return json.loads(json.dumps(data, sort_keys=True, default=list))

    def fingerprint(self):
        """Short stable hash of :meth:`shape`."""
        blob = json.dumps(self.shape(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def check_model_path(model_path):
    """``hf_model://<org>/<model>`` or an absolute container path; anything else fails."""
    value = (model_path or "").strip()
    if not value:
        raise TaoInferenceError(
            "model_path is required: give hf_model://<org>/<model> or an absolute path inside the container"
        )
    if value.startswith(_HF_PREFIX):
        rest = value[len(_HF_PREFIX):]
        parts = rest.split("/")
        if len(parts) != 2 or not all(parts):
            raise TaoInferenceError(
                "model_path '%s' is not of the form hf_model://<org>/<model>" % value
            )
        return value
    for scheme in catalog.SERVICE["model_path"]["rejected_schemes"]:
        if value.lower().startswith(scheme):
            hint = " (HuggingFace models are written hf_model://<org>/<model>)" if scheme == "hf://" else (
                ": the inference service reads no cloud storage; copy the checkpoint to the host and "
                "mount it with volumes, or use hf_model://<org>/<model>"
            )
            raise TaoInferenceError("model_path scheme %s is not supported%s" % (scheme, hint))
    if "://" in value:
        raise TaoInferenceError(
            "model_path '%s' has an unknown scheme; use hf_model://<org>/<model> or an absolute path" % value
        )
    if not value.startswith("/"):
        raise TaoInferenceError(
            "model_path '%s' is relative; give the absolute path the checkpoint has inside the container "
            "(mount a host folder with volumes)" % value
        )
    return value


def _check_env(env, secret_names):
    clean = {}
    for key, value in sorted((env or {}).items()):
        key = str(key)
        if not _ENV_NAME.fullmatch(key):
            raise TaoInferenceError("env name %r is not a valid variable name" % key)
        if key in catalog.FORBIDDEN_ENV:
            raise TaoInferenceError(
                "env %s must not be set: it turns on callbacks to a TAO API server; remove it" % key
            )
        if key in catalog.SECRET_ENV or key in secret_names or trust.looks_secret(key):
            raise TaoInferenceError(
                "env %s looks like a credential: do not put its value in a playbook, where it would be stored "
                "in the container's plain settings. Export it on the host that runs the module and list its "
                "name in secret_env, or give it in secrets (an option Ansible never logs)" % key
            )
        if isinstance(value, bool):
            value = "True" if value else "False"
        clean[key] = "" if value is None else str(value)
    return clean


def check_secrets(secrets):
    """The ``secrets`` option (name -> value, ``no_log``: e.g. an AWX credential) as ``{name: str}``. Messages
    name the variable, never its value."""
    if secrets is None:
        return {}
    if not isinstance(secrets, dict):
        raise TaoInferenceError("secrets must be a mapping of variable names to values")
    clean = {}
    for name, value in secrets.items():
        if not (isinstance(name, str) and _ENV_NAME.fullmatch(name)):  # a key may be a pasted value: never shown
            raise TaoInferenceError("secrets has a key that is not a variable name (letters, digits and '_', not "
                                    "starting with a digit); its keys are names such as HF_TOKEN")
        if name in catalog.FORBIDDEN_ENV:
            raise TaoInferenceError("secrets.%s must not be set: it turns on callbacks to a TAO API server; remove "
                                    "it" % name)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TaoInferenceError("secrets.%s must be a string (the secret's value), not a %s"
                                    % (name, "boolean" if isinstance(value, bool) else
                                       "null" if value is None else type(value).__name__))
        value = str(value)
        if not value:
            raise TaoInferenceError("secrets.%s is empty: give its value (an unset credential in AWX or a "
                                    "variable that is not defined gives an empty one), or leave the name out" % name)
        if "\0" in value:
            raise TaoInferenceError("secrets.%s holds a NUL character, which no environment can carry" % name)
        _check_secret_length(value, "secrets.%s" % name)
        clean[name] = value
    return clean


def _check_secret_length(value, what):
    check_secret_length(value, what, "it guards nothing: give the real secret, or pass a value that is not secret "
                                     "in env")


def _check_secret_env(names, model_path, environ, given=()):
    """Secret names to pass through: those of ``secret_env`` (read from ``environ``) and ``given`` (the
    names of the ``secrets`` option). ``names`` None means: HF_TOKEN when the model comes from the hub and
    HF_TOKEN is set (or given)."""
    if names is None:
        if model_path.startswith(_HF_PREFIX) and environ.get("HF_TOKEN"):
            if "HF_TOKEN" not in given:  # a value in secrets is the one passed on (and was checked there)
                _check_secret_length(environ["HF_TOKEN"], "HF_TOKEN (passed on for the hf_model:// model)")
            return tuple(sorted(set(("HF_TOKEN",)) | set(given)))
        return tuple(sorted(given))
    result = list(given)
    missing = []
    for name in names:
        name = str(name)
        if not _ENV_NAME.fullmatch(name):
            raise TaoInferenceError("secret_env entry %r is not a variable name (give names, never values)" % name)
        if name in catalog.FORBIDDEN_ENV:
            raise TaoInferenceError("secret_env %s must not be set: remove it" % name)
        if name in given:
            raise TaoInferenceError("%s is given both in secret_env (read from the environment) and in secrets (a "
                                    "value): give it one way; remove it from secret_env to use the value in secrets"
                                    % name)
        if name not in environ:
            missing.append(name)
        else:
            _check_secret_length(environ[name], "secret_env %s (its value in the environment)" % name)
        if name not in result:
            result.append(name)
    if missing:
        raise TaoInferenceError(
            "secret_env names %s, which %s not set on the host that runs the module; export %s "
            "(e.g. `export %s=...`) and run again"
            % (", ".join(missing), "is" if len(missing) == 1 else "are",
               " and ".join(missing), missing[0])
        )
    return tuple(sorted(result))


_SIZE = re.compile(r" *(\d+(?:\.\d+)?) *([bkmg]?)b? *", re.IGNORECASE)


def parse_size(value):
    """Bytes in ``value`` ("16g", "512m", "1024"), as docker's --shm-size reads it."""
    match = _SIZE.fullmatch(str(value))
    if not match:
        raise TaoInferenceError("shm_size '%s' is not a size such as 16g, 512m or 1073741824" % value)
    number, unit = match.groups()
    return int(float(number) * 1024 ** "bkmg".index(unit.lower() or "b"))


def _check_shm_size(value):
    parse_size(value)
    return str(value).strip()


def _check_volumes(volumes):
    result = []
    for item in volumes or []:
        parts = str(item).split(":")
        # A comma would split the list pyxis and apptainer take; a control character breaks a script line.
        if any(c in str(item) for c in ",\n\r\t\0") or trust.check_text(str(item), "volume") is None:
            raise TaoInferenceError("volume %r holds a comma or a control character; give one "
                                    "/host/path:/container/path[:ro|rw] per list item" % (item,))
        if len(parts) not in (2, 3) or not parts[0].startswith("/") or not parts[1].startswith("/"):
            raise TaoInferenceError(
                "volume '%s' is not /host/path:/container/path[:ro|rw]" % item
            )
        if len(parts) == 3 and parts[2] not in ("ro", "rw"):
            raise TaoInferenceError("volume '%s' has mode '%s'; use ro or rw" % (item, parts[2]))
        result.append(":".join(parts))
    return tuple(result)


def _check_server_options(network_arch, options):
    allowed = catalog.arch_entry(network_arch).get("optional_flags") or {}
    clean = {}
    for key, value in sorted((options or {}).items()):
        if key not in allowed:
            raise TaoInferenceError(
                "server_options.%s is not a %s server option; valid: %s"
                % (key, network_arch, ", ".join(sorted(allowed)) or "none")
            )
        kind = allowed[key]["type"]
        try:
            if kind == "bool":
                if isinstance(value, str):
                    if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
                        raise ValueError(value)
                    value = value.lower() in ("true", "yes", "1")
                clean[key] = bool(value)
            elif kind == "int":
                clean[key] = int(value)
            else:
                clean[key] = float(value)
        except (TypeError, ValueError):
            raise TaoInferenceError("server_options.%s must be of type %s, got %r" % (key, kind, value))
    return clean


# The options that describe a service, on every platform: the one place their defaults live.
SERVICE_OPTIONS = dict(
    name=dict(type="str"),
    network_arch=dict(type="str", choices=list(catalog.NETWORK_ARCHS)),
    model_path=dict(type="str"),
    platform=dict(type="str", choices=list(platforms.names()), default="local-docker"),
    num_gpus=dict(type="int", default=1),
    image=dict(type="str"),
    host_port=dict(type="int"),
    env=dict(type="dict", default={}),
    secret_env=dict(type="list", elements="str", no_log=False),
    volumes=dict(type="list", elements="str", default=[]),
    model_key=dict(type="str", choices=list(catalog.arch_entry("cosmos-predict2.5")["model_keys"]), no_log=False),
    server_options=dict(type="dict", default={}),
    shm_size=dict(type="str", default="16g"),
)


def with_defaults(option_spec, params):
    """``params`` with every option of ``option_spec`` that is unset (None) at its default."""
    values = dict(params)
    for option, rules in option_spec.items():
        if values.get(option) is None and rules.get("default") is not None:
            values[option] = rules["default"]
    return values


def build_spec(params, environ):
    """Validate module parameters into a :class:`ServiceSpec`.

    ``params`` uses the module option names (unset ones take their defaults from
    :data:`SERVICE_OPTIONS` and the platform's options); ``environ`` is the
    environment of the host running the module (image overrides and secrets come from it).
    """
    params = with_defaults(SERVICE_OPTIONS, params)
    name = params.get("name")
    if name is not None and not _NAME.fullmatch(name):
        raise TaoInferenceError(
            "name %r must start with a letter or digit and hold only letters, digits, '.', '_' "
            "or '-' (63 at most)" % name
        )
    network_arch = params.get("network_arch")
    if not network_arch:
        raise TaoInferenceError(
            "network_arch is required; choose one of: %s" % ", ".join(catalog.NETWORK_ARCHS)
        )
    arch = catalog.arch_entry(network_arch)
    platform = params["platform"]
    driver_class = platforms.driver_class(platform)
    foreign = platforms.foreign_options(platform, params)
    if foreign:
        raise TaoInferenceError("%s: %s; remove %s or choose that platform" % (
            ", ".join("%s is an option of platform %s, not of %s" % (option, owner, platform)
                      for option, owner in foreign),
            "they would do nothing here" if len(foreign) > 1 else "it would do nothing here",
            "them" if len(foreign) > 1 else "it"))
    model_path = check_model_path(trust.check_text(params.get("model_path"), "model_path"))

    num_gpus = int(params["num_gpus"])
    if num_gpus < 0:
        raise TaoInferenceError("num_gpus must be 0 (CPU-only image) or more, got %d" % num_gpus)

    host_port = params.get("host_port")
    if host_port is not None:
        host_port = int(host_port)
        if not 1 <= host_port <= 65535:
            raise TaoInferenceError("host_port %d is not a TCP port (1-65535)" % host_port)

    model_key = params.get("model_key")
    if arch["style"] == "cosmos_predict" and model_path.startswith(_HF_PREFIX):
        keys = arch["model_keys"]
        model_key = model_key or arch["default_model_key"]
        if model_key not in keys:
            raise TaoInferenceError(
                "model_key '%s' is not a registered cosmos-predict2.5 model; choose one of: %s"
                % (model_key, ", ".join(keys))
            )
    elif model_key:
        raise TaoInferenceError(
            "model_key applies only to cosmos-predict2.5 with an hf_model:// model_path; remove it"
        )

    given = check_secrets(params.get("secrets"))
    for key in sorted(given):
        if key in (params.get("env") or {}):
            raise TaoInferenceError("%s is given both in env and in secrets: give it once, in secrets" % key)
    secret_env = _check_secret_env(params.get("secret_env"), model_path, environ, tuple(given))
    image, image_source = resolve_image(network_arch, environ, override=params.get("image"))
    if not _IMAGE.fullmatch(image):
        raise TaoInferenceError("image %r (from %s) is not an image reference such as "
                                "nvcr.io/nvidia/tao/tao-toolkit:7.0.0-cosmos-rl" % (image, image_source))
    return ServiceSpec(
        name=name,
        network_arch=network_arch,
        model_path=model_path,
        platform=platform,
        num_gpus=num_gpus,
        image=image,
        image_source=image_source,
        host_port=host_port,
        env=_check_env(params.get("env"), secret_env),
        secret_env=secret_env,
        volumes=_check_volumes(params.get("volumes")),
        model_key=model_key,
        server_options=_check_server_options(network_arch, params.get("server_options")),
        shm_size=_check_shm_size(params["shm_size"]),
        platform_options=driver_class.spec_options(
            with_defaults(driver_class.OPTIONS, dict(params, secret_env=list(secret_env))), environ),
    )
