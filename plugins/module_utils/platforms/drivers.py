# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The platforms: name -> driver class, each loaded only when it is asked for.

A platform is one driver file (``platforms/<name>.py``, a :class:`base.Driver`),
one line in :data:`DRIVERS`, one doc fragment, one preflight role and its tests.
Modules and module_utils import this file as ``platforms`` (``platforms/__init__.py``
stays empty, as ansible-test sanity of ansible-core 2.17 requires).
Each loader holds a plain import statement, so Ansible packs every driver into a
module's payload. A module imports every driver file for its options (driver
files keep third-party clients out of their top level) and creates only the
driver of the platform it works on.
"""

from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError


def _local_docker():
    from ansible_collections.tao.inference.plugins.module_utils.platforms.local_docker import LocalDockerDriver
    return LocalDockerDriver


def _slurm():
    from ansible_collections.tao.inference.plugins.module_utils.platforms.slurm import SlurmDriver
    return SlurmDriver


def _kubernetes():
    from ansible_collections.tao.inference.plugins.module_utils.platforms.kubernetes import KubernetesDriver
    return KubernetesDriver


def _brev():
    from ansible_collections.tao.inference.plugins.module_utils.platforms.brev import BrevDriver
    return BrevDriver


def _lepton():
    from ansible_collections.tao.inference.plugins.module_utils.platforms.lepton import LeptonDriver
    return LeptonDriver


DRIVERS = {
    "local-docker": _local_docker,
    "slurm": _slurm,
    "kubernetes": _kubernetes,
    "brev": _brev,
    "lepton": _lepton,
}


def names():
    return tuple(DRIVERS)


def driver_class(name):
    """The driver class of platform ``name``; a platform that has not landed fails clearly."""
    try:
        loader = DRIVERS[name]
    except (KeyError, TypeError):
        raise TaoInferenceError("platform %r is not available in this release of tao.inference; the platforms that "
                                "work: %s" % (name, ", ".join(sorted(DRIVERS))))
    return loader()


def _merge(specs):
    merged = {}
    for platform, spec in specs:
        for option, rules in spec.items():
            if option in merged and merged[option] != rules:
                raise ValueError("platforms disagree on option %s (%s): one option, one definition" % (option, platform))
            merged[option] = rules
    return merged


def argument_spec():
    """Every platform's options, merged for a module's argument spec (so one set of options, e.g. in
    ``module_defaults``, serves every module). Platforms that share an option (an ssh key) declare it
    the same way."""
    return _merge((name, driver_class(name).OPTIONS) for name in sorted(DRIVERS))


def foreign_options(platform, params):
    """Options of other platforms given with a value other than their default, as
    ``[(option, owners)]``: they would do nothing on ``platform``."""
    own = driver_class(platform).OPTIONS
    found = []
    for name in sorted(DRIVERS):
        if name == platform:
            continue
        for option, rules in driver_class(name).OPTIONS.items():
            if option in own or option not in params:
                continue
            if params[option] is not None and params[option] != rules.get("default"):
                found.append((option, name))
    return found
