"""Make ``ansible_collections.tao.inference`` importable when pytest runs from a checkout.

The repository root is the collection root. ``make`` links it at
``.build/collections/ansible_collections/tao/inference``; when the tests run
under ansible-test (a real ansible_collections tree) nothing is needed.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ensure_collection_path():
    try:
        import ansible_collections.tao.inference  # noqa: F401  pylint: disable=unused-import
        return
    except ImportError:
        pass
    base = os.path.join(ROOT, ".build", "collections")
    link = os.path.join(base, "ansible_collections", "tao", "inference")
    if not os.path.lexists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.relpath(ROOT, os.path.dirname(link)), link)
    sys.path.insert(0, base)


_ensure_collection_path()
