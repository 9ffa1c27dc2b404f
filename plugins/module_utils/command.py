# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-arch inner command, job payload and container environment.

The inner command is identical on every platform; platforms only differ in
how they run ``/bin/sh -c <inner command>`` and hand over the environment.
"""

import json
import shlex

from ansible_collections.tao.inference.plugins.module_utils import catalog
from ansible_collections.tao.inference.plugins.module_utils.platforms import drivers as platforms
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError


def _blob(data):
    """Compact JSON, shell-quoted. The cosmos-rl server parses it with
    ``ast.literal_eval``, so only strings, numbers, lists and dicts may occur."""
    _check_literal_safe(data)
    return shlex.quote(json.dumps(data, separators=(",", ":"), sort_keys=True))


def _check_literal_safe(value, path="payload"):
    if isinstance(value, bool) or value is None:
        raise TaoInferenceError("%s holds %r, which the server cannot parse; use a string" % (path, value))
    if isinstance(value, dict):
        for key, item in value.items():
            _check_literal_safe(item, "%s.%s" % (path, key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_literal_safe(item, "%s[%d]" % (path, index))


def job_payload(spec, job_id):
    return {
        "job_id": job_id,
        "specs": {"model_path": spec.model_path},
        "neural_network_name": spec.network_arch,
    }


def env_payload(spec, job_id):
    """The TAO variables the server expects ({} for archs that use none)."""
    if not catalog.arch_entry(spec.network_arch).get("tao_env"):
        return {}
    return {
        "TAO_EXECUTION_BACKEND": platforms.driver_class(spec.platform).EXECUTION_BACKEND,
        "TAO_API_JOB_ID": job_id,
        "CLOUD_BASED": "False",
    }


def _optional_flags(arch, options):
    args = []
    flags = arch.get("optional_flags") or {}
    for key in sorted(options or {}):
        flag = flags[key]
        value = options[key]
        if flag["type"] == "bool":
            if value:
                args.append(flag["flag"])
        else:
            args.extend([flag["flag"], str(value)])
    return args


def inner_args(spec, job_id):
    """The server's argv as a list of already shell-quoted words."""
    arch = catalog.arch_entry(spec.network_arch)
    words = [shlex.quote(w) for w in arch["executable"]]
    words += [shlex.quote(w) for w in arch.get("leading_args") or []]
    style = arch["style"]
    if style == "job_blob":
        words += ["--job", _blob(job_payload(spec, job_id)),
                  "--docker_env_vars", _blob(env_payload(spec, job_id))]
    elif style == "cosmos_predict":
        if spec.is_hf_model:
            words += ["--model", shlex.quote(spec.model_key)]
        else:
            words += ["--checkpoint-path", shlex.quote(spec.model_path)]
        words += ["--output-dir", shlex.quote(arch["output_dir"]),
                  "--port", str(catalog.CONTAINER_PORT)]
    else:  # pragma: no cover - guarded by the catalog test
        raise TaoInferenceError("network_arch %s has unknown command style %s" % (spec.network_arch, style))
    words += [shlex.quote(w) for w in _optional_flags(arch, spec.server_options)]
    return words


def inner_command(spec, job_id):
    """``umask 0 && <server argv>``: the shell string run inside the container."""
    return catalog.SERVICE["command_prefix"] + " ".join(inner_args(spec, job_id))


def container_env(spec, job_id, environ):
    """Return ``(plain, secret)`` environment dicts for the container.

    ``secret`` maps each name of ``spec.secret_env`` to its value from
    ``environ``; callers hand it only to the platform's secret channel.
    """
    plain = dict(env_payload(spec, job_id))
    plain.update(spec.env or {})
    secret = {}
    for name in spec.secret_env or ():
        if name not in environ:
            raise TaoInferenceError("secret %s is no longer set in the environment; export it and run again" % name)
        secret[name] = environ[name]
    return plain, secret
