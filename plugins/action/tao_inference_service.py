# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The action behind every tao.inference module (the other modules' action files name this class).

It runs the module exactly as ``ansible.builtin.normal`` does (check mode,
async, module_defaults all unchanged), after one call: ``gc.freeze()``.

Ansible forks a worker process for each task, and the worker inherits the
controller's whole heap: every loaded plugin, the inventory, the play. The
first use of a module in a run builds its AnsiballZ payload, parsing each
module_utils file into a syntax tree; for this collection's modules that
allocates enough to set off a full garbage collection, which walks the whole
inherited heap and finds nothing to free. Freezing moves the inherited objects out of the collector's sight, the
usual CPython idiom for forked workers, so collections in the worker only look
at the task's own objects. The worker exits when the task ends, so nothing
frozen outlives it. ``bench/start_overhead.py`` measures the effect.
"""

import gc

from ansible.plugins.action.normal import ActionModule as NormalAction


class ActionModule(NormalAction):
    """``ansible.builtin.normal`` in a worker whose inherited heap is frozen."""

    def run(self, tmp=None, task_vars=None):
        gc.freeze()
        return super(ActionModule, self).run(tmp, task_vars)
