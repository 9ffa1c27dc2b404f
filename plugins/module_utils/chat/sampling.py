# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sampling: the values a request sends, by network_arch.

Values are applied only as the user gave them; defaults are applied only to fields
the user skipped, and are reported as defaults; fields the arch does not support are
refused before anything is sent.
"""

from ansible_collections.tao.inference.plugins.module_utils import catalog
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError

CONSTRAINTS = catalog.REQUEST["network_arch_constraints"]


def sampling_fields(network_arch):
    """``{field: {type, default, min, max, description}}`` for ``network_arch``."""
    base = catalog.REQUEST["sampling_fields"]
    fields = {}
    for field, override in (CONSTRAINTS[network_arch].get("fields") or {}).items():
        merged = dict(base.get(field) or {})
        merged.update(override or {})
        fields[field] = merged
    return fields


def _coerce(field, spec, value, network_arch):
    kind = spec.get("type", "str")
    try:
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            value = int(value)
        elif kind == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            value = float(value)
        else:
            value = str(value)
    except (TypeError, ValueError):
        raise TaoInferenceError("sampling.%s must be %s for %s, got %r" % (
            field, {"int": "a whole number", "float": "a number"}.get(kind, "a string"), network_arch, value))
    low, high = spec.get("min"), spec.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        raise TaoInferenceError("sampling.%s=%s is outside %s..%s for %s" % (
            field, value, "" if low is None else low, "" if high is None else high, network_arch))
    return value


def apply_sampling(network_arch, sampling):
    """Return ``(body_fields, applied, warnings)``.

    ``sampling`` holds the values the user chose; a field that is missing,
    ``None`` or ``""`` takes its default (reported with ``default: true``).
    """
    if sampling is None:
        raise TaoInferenceError(
            "sampling is required: give the values the user chose, or {} to accept every default for %s (%s)"
            % (network_arch, ", ".join("%s=%s" % (k, v.get("default")) for k, v in sorted(
                sampling_fields(network_arch).items()))))
    fields = sampling_fields(network_arch)
    constraints = CONSTRAINTS[network_arch]
    unsupported = set(constraints.get("unsupported") or [])
    body, applied, warnings = {}, [], []
    for field in sorted(sampling):
        if field in fields:
            continue
        if field in unsupported:
            raise TaoInferenceError("sampling.%s is not supported by %s; remove it (supported: %s)"
                                    % (field, network_arch, ", ".join(sorted(fields))))
        owners = [arch for arch in sorted(CONSTRAINTS) if field in sampling_fields(arch)]
        if owners:
            raise TaoInferenceError(
                "sampling.%s belongs to %s, but the chosen service runs %s; remove it or send the request "
                "to a %s service" % (field, " and ".join(owners), network_arch, owners[0]))
        raise TaoInferenceError("sampling.%s is not a sampling field; %s takes: %s"
                                % (field, network_arch, ", ".join(sorted(fields))))
    for field in sorted(fields):
        spec = fields[field]
        given = sampling.get(field)
        if given is None or (isinstance(given, str) and not given.strip() and spec.get("type") != "str"):
            value, is_default = spec.get("default"), True
        else:
            value, is_default = _coerce(field, spec, given, network_arch), False
        body[field] = value
        applied.append({"field": field, "value": value, "default": is_default})
        if not is_default and field in (constraints.get("ignored_by_server") or []):
            warnings.append("%s ignores %s; it was sent as given" % (network_arch, field))
    return body, applied, warnings
