# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for tao_inference_pull: the one action of every module (see tao_inference_service.py)."""

from ansible_collections.tao.inference.plugins.action.tao_inference_service import ActionModule  # noqa: F401 pylint: disable=unused-import
