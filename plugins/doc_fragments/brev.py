# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment(object):
    # platform: brev. Options of the driver plugins/module_utils/platforms/brev.py.
    DOCUMENTATION = r"""
options:
  brev_instance:
    description:
      - With C(platform=brev) only, like every option of this group. The Brev instance (name or id) whose
        Docker engine runs the service, reached over SSH as C(ssh://<instance>) through Brev's SSH
        configuration (C(brev refresh) writes it; give C(ssh_config) when it is not included from
        C(~/.ssh/config)).
      - A RUNNING instance is used as it is; a STARTING one is waited for within C(wait_timeout); a STOPPED one
        is started only with O(brev_start_stopped); other states are refused with a message.
      - Without it, the collection creates an instance (C(brev create --detached), see
        O(brev_instance_type) and O(brev_gpu_name)) and deletes it again with C(state=absent). An instance it
        did not create is never deleted.
      - The C(brev) CLI must be installed and logged in (C(brev login)), or O(brev_api_token) given (see there).
    type: str
  brev_api_token:
    description:
      - A Brev token (the one C(brev login --token) takes) that logs the C(brev) CLI in when it says it is logged
        out. Default is C(BREV_API_TOKEN).
      - The CLI takes a token only on its command line, where every local user can read it, and neither from
        standard input nor from the environment. So the collection does what C(brev login --token) does itself.
        It writes the CLI's credentials file C($HOME/.brev/credentials.json) (C(HOME) as the module sees it, as
        the CLI finds it) in the CLI's format, with mode 0600, atomically, never through a symbolic link and never
        in a folder another user owns or can write, then checks with C(brev ls) that the CLI is logged in. The
        file then holds the token, as after C(brev login --token); the CLI keeps using that login afterwards.
      - A CLI that is logged in is left as it is, whatever the token. A token Brev refuses fails the task with a
        message naming C(BREV_API_TOKEN) (never its value) and leaves the credentials file as it was.
      - The login happens whenever the CLI is needed and logged out, in check mode too (nothing can be read from
        Brev without it), like C(brev refresh) writing Brev's SSH configuration. It is the CLI's own state, not
        the service's, and the task's C(changed) does not count it.
      - The token never appears on a command line, in the environment of a child process, in the registry,
        results, diffs or logs. C(service.brev_logged_in_with_token) in the result of a start (and the preflight's
        C(brev_logged_in_with_token)) says whether this run logged the CLI in with it.
      - On a host with a Kubernetes service account token (C(/var/run/secrets/kubernetes.io/serviceaccount/token))
        the CLI uses that instead of its credentials file, and a token login cannot take effect.
    type: str
  brev_instance_type:
    description:
      - Instance types to try when the collection creates the instance (C(brev create --type)), comma-separated
        in order of preference, e.g. V(g5.xlarge,g6.xlarge).
    type: str
  brev_gpu_name:
    description:
      - GPU the created instance must have when no O(brev_instance_type) is given (C(brev create --gpu-name)),
        e.g. V(A100).
    type: str
  brev_expose:
    description:
      - How the service is reached. V(tunnel) publishes the port on the instance's loopback only and reaches it
        through a local C(ssh -N -L) forward (C(http://localhost:<port>)), tracked by pid and start time like a
        Slurm tunnel. V(direct) publishes it on the instance's address (as C(ssh -G <instance>) gives it, or
        O(brev_bind_address)) and serves there; anyone who can reach that address can use the service, which has
        no authentication.
    type: str
    choices: [tunnel, direct]
    default: tunnel
  brev_bind_address:
    description:
      - With O(brev_expose=direct), the address on the instance the port is published on, when the address Brev's
        SSH configuration gives is not one of the instance's own (a cloud's NAT), e.g. V(0.0.0.0).
    type: str
  brev_start_stopped:
    description:
      - Start O(brev_instance) (C(brev start)) when it is STOPPED, instead of failing.
    type: bool
    default: false
"""
