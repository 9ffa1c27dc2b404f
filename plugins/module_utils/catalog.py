# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Accessors for the data in references/ (see _catalog.py)."""

from ansible_collections.tao.inference.plugins.module_utils._catalog import CATALOG
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError

SERVICE = CATALOG["service"]
REQUEST = CATALOG["request"]
CONFIGS = CATALOG["configs"]
VERSIONS = CATALOG["versions"]

NETWORK_ARCHS = tuple(sorted(SERVICE["network_archs"]))
SECRET_ENV = tuple(SERVICE["secret_env"])
FORBIDDEN_ENV = tuple(SERVICE["forbidden_env"])
CONTAINER_PORT = SERVICE["container_port"]
REGISTRY_SCHEMA_VERSION = SERVICE["registry"]["schema_version"]
PORT_RANGE = tuple(SERVICE["registry"]["port_range"])


def arch_entry(network_arch):
    """The service.yaml entry of ``network_arch``; fails for an unsupported arch."""
    try:
        return SERVICE["network_archs"][network_arch]
    except KeyError:
        raise TaoInferenceError(
            "network_arch '%s' is not supported; choose one of: %s"
            % (network_arch, ", ".join(NETWORK_ARCHS))
        )


def chat_url_of(entry):
    """The chat-completions URL of a registry entry's service."""
    return entry["host_url"].rstrip("/") + REQUEST["endpoints"]["chat"]
