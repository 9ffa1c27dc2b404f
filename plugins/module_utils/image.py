# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Container image resolution.

1. ``<network_arch>.config.json`` gives ``api_params.image``, a key such as
   ``COSMOS_RL``; a missing file or empty key falls back to ``COSMOS_RL``.
2. ``IMAGE_<KEY>`` in the environment overrides the mapping for that key.
3. The mapped value is a dotted key into versions.yaml ``images.*``;
   anything holding ``/`` or ``:`` is an absolute URI and passes through.
"""

from ansible_collections.tao.inference.plugins.module_utils import catalog
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError


def image_key(network_arch, configs=None):
    """The image key of ``network_arch`` (config sidecar, else the fallback)."""
    configs = catalog.CONFIGS if configs is None else configs
    config = configs.get(network_arch) or {}
    key = ((config.get("api_params") or {}).get("image") or "").strip()
    return key or catalog.SERVICE["image_fallback_key"]


def _known_dotted_keys(images):
    keys = []
    for group, names in sorted((images or {}).items()):
        for name in sorted(names or {}):
            keys.append("%s.%s" % (group, name))
    return keys


def resolve_reference(value, versions=None, origin="the image mapping"):
    """Turn a dotted versions.yaml key or an absolute URI into an image URI."""
    versions = catalog.VERSIONS if versions is None else versions
    value = (value or "").strip()
    if not value:
        raise TaoInferenceError("%s is empty: set it to a versions.yaml key or an image URI" % origin)
    if "/" in value or ":" in value:
        return value
    images = versions.get("images") or {}
    node = images
    for part in value.split("."):
        if not isinstance(node, dict) or part not in node:
            raise TaoInferenceError(
                "%s names '%s', which is not a key of versions.yaml images; use one of: %s, "
                "or an absolute image URI" % (origin, value, ", ".join(_known_dotted_keys(images)))
            )
        node = node[part]
    if not isinstance(node, str):
        raise TaoInferenceError(
            "%s names '%s', a group in versions.yaml, not an image; use one of: %s"
            % (origin, value, ", ".join(_known_dotted_keys(images)))
        )
    return node


def resolve_image(network_arch, environ, override=None, configs=None, versions=None, mapping=None):
    """Return ``(image, how)``: the image URI and a one-line account of where it came from."""
    if override:
        return resolve_reference(override, versions, origin="option image"), "option image"
    mapping = catalog.SERVICE["image_mapping"] if mapping is None else mapping
    key = image_key(network_arch, configs)
    env_name = catalog.SERVICE["image_env_prefix"] + key
    env_value = (environ.get(env_name) or "").strip()
    if env_value:
        return resolve_reference(env_value, versions, origin="$" + env_name), "$" + env_name
    if key not in mapping:
        raise TaoInferenceError(
            "image key '%s' (from %s.config.json) has no entry in the image mapping; "
            "known keys: %s. Set %s to an image URI, or pass the image option"
            % (key, network_arch, ", ".join(sorted(mapping)), env_name)
        )
    return (
        resolve_reference(mapping[key], versions, origin="image mapping %s" % key),
        "mapping %s -> %s" % (key, mapping[key]),
    )
