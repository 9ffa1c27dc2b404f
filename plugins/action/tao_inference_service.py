# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for tao_inference_service: the module as ansible.builtin.normal runs it (see plugin_utils/action.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.tao.inference.plugins.plugin_utils.action import FrozenHeapAction


class ActionModule(FrozenHeapAction):
    """Runs tao_inference_service."""
