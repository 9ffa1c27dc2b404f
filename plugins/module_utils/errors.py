# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one exception type the modules turn into ``fail_json``."""


class TaoInferenceError(Exception):
    """A failure the user can act on.

    ``msg`` says what went wrong and what to do next. ``details`` are extra,
    secret-free facts returned beside the message (e.g. ``candidates`` when a
    request is ambiguous, ``logs`` when a model failed to load).
    """

    def __init__(self, msg, **details):
        super(TaoInferenceError, self).__init__(msg)
        self.msg = msg
        self.details = details


def fail(module, exc):
    """Report ``exc`` through ``module.fail_json`` (never a traceback)."""
    module.fail_json(msg=exc.msg, **exc.details)
