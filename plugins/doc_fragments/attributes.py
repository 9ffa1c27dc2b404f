# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment(object):
    # Nothing by itself; modules extend tao.inference.attributes.action_group.
    DOCUMENTATION = r"""
options: {}
"""

    # Every module of the collection is in the action group `service` (meta/runtime.yml).
    ACTION_GROUP = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/tao.inference.service) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - tao.inference.service
"""
