# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-only callback: writes every task result as one JSON line to $TAO_TEST_RECORD."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: record
type: aggregate
short_description: Record task results for the integration tests
description:
  - Appends one JSON object per task result to the file named by C(TAO_TEST_RECORD).
requirements:
  - TAO_TEST_RECORD set in the environment
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "record"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self._task_started = None

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_started = time.time()

    def _write(self, result, status):
        path = os.environ.get("TAO_TEST_RECORD")
        if not path:
            return
        name = result.task_name if hasattr(result, "task_name") else result._task.get_name()
        if getattr(result._task, "_role", None) is not None and " : " in name:
            name = name.split(" : ", 1)[1]  # ansible-core 2.21 puts "<role> : " before a role's task names
        data = {
            "task": name,
            "host": result._host.get_name(),
            "status": status,
            "task_started": self._task_started,
            "finished": time.time(),
            "result": json.loads(json.dumps(result._result, default=str)),
        }
        with open(path, "a") as handle:
            handle.write(json.dumps(data) + "\n")

    def v2_runner_on_ok(self, result):
        self._write(result, "changed" if result._result.get("changed") else "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._write(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._write(result, "skipped")
