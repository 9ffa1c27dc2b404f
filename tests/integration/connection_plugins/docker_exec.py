# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-only connection: runs tasks inside a container of the local Docker engine with ``docker exec``."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: docker_exec
short_description: Run tasks in a local Docker container, for the integration tests
description:
  - Runs every command with C(docker exec -i <container> /bin/sh -c ...), the container named by
    C(ansible_host); files are copied in through the same standard input.
author: tao.inference
"""

import shlex
import subprocess

from ansible.errors import AnsibleError
from ansible.plugins.connection import ConnectionBase


class Connection(ConnectionBase):
    transport = "docker_exec"
    has_pipelining = True

    def _connect(self):
        self._connected = True
        return self

    def _exec(self, cmd, stdin):
        argv = ["docker", "exec", "-i", self._play_context.remote_addr, "/bin/sh", "-c", cmd]
        proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=300, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    def exec_command(self, cmd, in_data=None, sudoable=False):
        super(Connection, self).exec_command(cmd, in_data=in_data, sudoable=sudoable)
        return self._exec(cmd, in_data or b"")

    def put_file(self, in_path, out_path):
        super(Connection, self).put_file(in_path, out_path)
        with open(in_path, "rb") as handle:
            rc, _out, err = self._exec("cat > %s" % shlex.quote(out_path), handle.read())
        if rc != 0:
            raise AnsibleError("cannot copy %s into the container: %s" % (out_path, err))

    def fetch_file(self, in_path, out_path):
        super(Connection, self).fetch_file(in_path, out_path)
        rc, out, err = self._exec("cat %s" % shlex.quote(in_path), b"")
        if rc != 0:
            raise AnsibleError("cannot read %s in the container: %s" % (in_path, err))
        with open(out_path, "wb") as handle:
            handle.write(out)

    def close(self):
        self._connected = False
