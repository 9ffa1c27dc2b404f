"""Test hosts on this machine that really are separate: network namespaces on a veth, their own dockerd
and sshd (and, for the fleet hosts, their own hostname, home, /tmp and /run in a mount namespace).

Used by the Brev stand-in's ``TAO_BREV_HOSTS=netns`` instances (tests/brev/brev_standin) and by
``scripts/ensure-fleet.sh`` (:mod:`hosts.fleet`). Standard library only: it runs with Debian's ``python3 -I``
(``tests/`` on ``sys.path``)."""
