"""A stand-in of the DGX Cloud Lepton REST API for the collection's tests.

It serves the workspace routes the ``leptonai`` client calls (``/api/v2/workspaces/<id>/...``:
the workspace, deployments with their replicas, readiness, terminations, events and logs, user
secrets, image pull secrets, dedicated node groups with their nodes, resource shapes), checks every
body it receives against the ``leptonai`` package's own models, and runs each deployment's replicas
for real on the local Docker engine, behind an ingress of its own on loopback that enforces the
endpoint's tokens. Everything lives in memory; the containers and listeners it made are removed when
it stops.

Modules: ``spec`` (the leptonai models, the API's own rules), ``workspace`` (state, quota,
scheduling, events), ``replicas`` (replica workers on Docker), ``ingress`` (external endpoints),
``docker`` (Engine API client) and ``api`` (the HTTP front end).
"""

VERSION = "0.47.1"  # the leptonai release whose models the stand-in validates against
LABEL = "tao.lepton-standin"
