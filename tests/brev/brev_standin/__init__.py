"""A stand-in of the ``brev`` CLI for the Brev driver's tests (see README.md beside this file).

Stdlib only. State lives in a locked JSON file under ``TAO_BREV_DIR``; every RUNNING instance has a real
sshd on its own loopback address, reached through the SSH config that ``brev refresh`` writes."""
