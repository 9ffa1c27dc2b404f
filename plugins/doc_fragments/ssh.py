# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment(object):
    # Reaching a host with ssh, for every platform that does (see each platform's options).
    DOCUMENTATION = r"""
options:
  ssh_key_path:
    description:
      - Private key for the host the platform reaches with C(ssh) in batch mode (see the platform's own options).
      - A registry entry that records a key is used only when this option names the same key.
    type: path
  ssh_config:
    description:
      - An ssh client configuration file (C(ssh -F)) that says how to reach the host the platform reaches
        with C(ssh).
      - A registry entry that records an ssh configuration is used only when this option names the same file;
        a registry never chooses a configuration (and so never a C(ProxyCommand)) by itself.
    type: path
"""
