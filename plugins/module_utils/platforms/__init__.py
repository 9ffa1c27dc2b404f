# -*- coding: utf-8 -*-
# Apache License 2.0 (see LICENSE)
"""Platform drivers. Each one implements :class:`base.Driver`."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type
