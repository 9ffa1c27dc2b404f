# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Argument specs shared by the modules (they match doc_fragments/common.py)."""

import math

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tao.inference.plugins.module_utils import ephemeral, procs
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError, fail
from ansible_collections.tao.inference.plugins.module_utils.registry import DEFAULT_LOCK_TIMEOUT, Registry

REGISTRY_ARGS = dict(
    registry_path=dict(type="path"),
    lock_timeout=dict(type="float", default=DEFAULT_LOCK_TIMEOUT),
)

WAIT_ARGS = dict(
    wait=dict(type="bool", default=True),
    wait_timeout=dict(type="float", default=900),
    wait_sleep=dict(type="float", default=0.5),
)


def new_module(**kwargs):
    """``AnsibleModule(**kwargs)``, failing cleanly where ansible-core itself would raise a traceback
    (an int option given an infinite number overflows in its type check), with null options at their
    defaults. A module run with ``async`` stops when the watcher's child that started it ends (see
    :func:`procs.end_with_parent`), set before anything else."""
    procs.end_with_parent()
    try:
        module = AnsibleModule(**kwargs)
    except OverflowError:
        # The type checks are what failed: the same options taken as they come (secrets still masked)
        # can report it the Ansible way.
        loose = dict((option, dict(type="raw", no_log=bool(rules.get("no_log"))))
                     for option, rules in kwargs["argument_spec"].items())
        AnsibleModule(argument_spec=loose, supports_check_mode=True).fail_json(
            msg="an integer option was given an infinite number; give a finite whole number")
    # An option given as null (a role or playbook passing an unset variable on) takes its default too:
    # defaults live in the argument spec only.
    for option, rules in kwargs["argument_spec"].items():
        if module.params.get(option) is None and rules.get("default") is not None:
            module.params[option] = rules["default"]
    return module


def open_registry(module, read_only=False):
    """The registry the module's options name (per user by default), in the module's check mode
    (always read-only with ``read_only``)."""
    params = module.params
    if not 0 < params["lock_timeout"] <= 86400:
        module.fail_json(msg="lock_timeout must be more than 0 and at most 86400 seconds, got %s"
                         % params["lock_timeout"])
    registry = Registry(params["registry_path"], read_only or module.check_mode, params["lock_timeout"])
    warning = ephemeral.registry_warning(registry.path)  # an AWX job's container takes it away
    if warning:
        module.warn(warning)
    return registry


def run(module, action, cleanup=None):
    """Run ``action()``; turn TaoInferenceError into fail_json; drop the diff
    unless diff mode is on. ``cleanup()`` runs before the module answers (it
    closes connections, so no ssh process outlives the module)."""
    for option, value in sorted(module.params.items()):
        if isinstance(value, float) and not math.isfinite(value):
            module.fail_json(msg="%s must be a finite number of seconds, got %s" % (option, value))
    try:
        try:
            result = action()
        finally:
            if cleanup is not None:
                cleanup()
    except TaoInferenceError as exc:
        fail(module, exc)
        return
    except (procs.Interrupted, KeyboardInterrupt) as exc:
        module.fail_json(msg="interrupted (%s) before the task finished; run it again to see where things stand "
                             "(tao_inference_info)" % getattr(exc, "name", "SIGINT"), interrupted=True)
        return
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)
