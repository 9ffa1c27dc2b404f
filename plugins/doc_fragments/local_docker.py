# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment(object):
    # platform: local-docker. Options of the driver plugins/module_utils/platforms/local_docker.py.
    DOCUMENTATION = r"""
options:
  docker_host:
    description:
      - With C(platform=local-docker) only, like every option of this group. Docker engine to use, e.g.
        V(unix:///var/run/docker.sock), V(tcp://gpu-host:2376) or V(ssh://user@gpu-host). Default is C(DOCKER_HOST) or the local socket.
      - Without it and without C(DOCKER_HOST), the docker context in C(DOCKER_CONTEXT), else the current
        context of C(~/.docker/config.json), is used as the docker CLI does; a context that cannot be read
        is an error, never a silent fall-back to the local socket.
      - C(tcp://) uses TLS as O(docker_tls) and O(docker_tls_verify) say, with the certificates in
        O(docker_cert_path). Asked-for verification never weakens; a missing C(ca.pem), or half a client
        certificate pair, is an error.
      - C(ssh://) runs C(docker system dial-stdio) on that host over C(ssh) in batch mode (the docker CLI must
        be installed there); O(ssh_key_path) and O(ssh_config) apply. The host and user are checked (no
        leading C(-), no spaces or control characters) and always follow C(--) on the ssh command line.
      - Pulls use the registry credentials the docker CLI stored with C(docker login) on the host that runs
        the module (C(~/.docker/config.json) or C(DOCKER_CONFIG); C(auths), C(credHelpers), C(credsStore)).
        They are only sent to an engine that was authenticated (a C(tcp://) engine on another machine needs
        verified TLS); otherwise such a pull fails.
      - The registry entry of each service records the engine it was started on (also when C(DOCKER_HOST) or
        a context chose it), so stopping it later reaches that engine whatever the environment says then.
    type: str
  docker_tls:
    description:
      - Use TLS towards a C(tcp://) O(docker_host). Default from C(DOCKER_TLS) (on when it is set and not empty).
    type: bool
  docker_tls_verify:
    description:
      - Use TLS and verify the engine's certificate against C(ca.pem) in O(docker_cert_path).
        Default from C(DOCKER_TLS_VERIFY) (on when it is set and not empty), as the docker CLI reads it.
    type: bool
  docker_cert_path:
    description:
      - Folder with C(ca.pem), C(cert.pem) and C(key.pem). Default from C(DOCKER_CERT_PATH), else C(~/.docker).
    type: path
  pull:
    description:
      - When to pull the image (C(platform=local-docker) and C(platform=brev)). V(missing) pulls only images the Docker host does not have.
    type: str
    choices: [missing, always, never]
    default: missing
  bind_address:
    description:
      - Host address the port is published on. The service has no authentication, so the
        default keeps it on loopback; use V(0.0.0.0) to reach it from other machines.
    type: str
    default: 127.0.0.1
"""
