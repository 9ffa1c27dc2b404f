"""A stand-in Kubernetes API server for the collection's tests.

It serves the REST paths the official clients call (core/v1 and batch/v1), validates what it
receives against the official OpenAPI schemas, and runs Pods for real on the local Docker
engine: it is the Job controller, the scheduler, a one-node kubelet, the garbage collector and
the Service proxy of a one-node cluster.  Everything lives in memory; the containers, docker
volumes and listeners it made are removed when it stops.

Modules: ``model`` (resource table, errors, selectors, quantities), ``store`` (objects, resource
versions, watch history, patches), ``validation`` (schemas and the server's own rules),
``cluster`` (what a write does: defaults, admission, deletion and garbage collection),
``controllers`` (scheduler, Job controller, endpoints, namespaces, events), ``kubelet`` (pod
workers on Docker), ``docker`` (Engine API client), ``network`` (Service listeners, WebSocket
port-forward), ``tables`` (what ``kubectl get`` prints) and ``api`` (the HTTPS front end).
"""

VERSION = "v1.37.0"
NODE_NAME = "tao-node-0"
LABEL = "tao.k8s-standin"
