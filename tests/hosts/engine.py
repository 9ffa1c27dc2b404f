"""A Docker engine of a test host: dockerd started inside the host's namespaces with ``nsenter`` (never
``ip netns exec``: it remounts /sys and dockerd then fails with "Devices cgroup isn't mounted"), and the
machine's images copied into it."""

import os
import subprocess
import threading
import time

from . import common

_SAVING = threading.Lock()


def start(prefix, args, log_path, answers, timeout=60.0):
    """Start ``prefix + ["dockerd"] + args`` in a session of its own (output to ``log_path``) and wait until
    ``answers()`` is true (RuntimeError after ``timeout`` seconds, with the log's tail)."""
    with open(log_path, "a", encoding="utf-8") as log:
        subprocess.Popen(list(prefix) + ["dockerd"] + list(args), stdin=subprocess.DEVNULL,  # pylint: disable=consider-using-with
                         stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not answers():
        if time.monotonic() > deadline:
            raise RuntimeError("the test host's dockerd did not answer within %d s: %s" % (timeout, tail(log_path)))
        time.sleep(0.1)


def answers(host):
    """Whether the engine at ``host`` (a DOCKER_HOST URL) answers."""
    return common.run("docker", "-H", host, "version", "--format", "{{.Server.Version}}").returncode == 0


def tail(path, lines=5):
    """The last lines of a log, on one line."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return " | ".join(line.strip() for line in handle.read().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def image_id(image, host=None):
    """The id of ``image`` on the engine at ``host`` (None: the machine's own engine), or None."""
    args = ["docker"] + (["-H", host] if host else []) + ["image", "inspect", "--format", "{{.Id}}", image]
    proc = common.run(*args)
    return proc.stdout.strip() if proc.returncode == 0 else None


def copy_images(images, host, cache_dir=None):
    """Load into the engine at ``host`` each of ``images`` that the machine's engine has and ``host`` lacks (or
    has in another version). With ``cache_dir``, an image is saved once as ``<cache_dir>/<id>.tar`` and loaded
    from there (several hosts share one save). Returns the images loaded."""
    loaded = []
    for image in sorted(images):
        wanted = image_id(image)
        if wanted is None or image_id(image, host) == wanted:
            continue
        if cache_dir:
            archive = save(image, wanted, cache_dir)
            proc = common.run("docker", "-H", host, "load", "--input", archive)
        else:
            with subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL) as dump:
                proc = subprocess.run(["docker", "-H", host, "load"], stdin=dump.stdout, capture_output=True, text=True,
                                      check=False)
                dump.stdout.close()
                if dump.wait():
                    raise RuntimeError("docker save %s failed" % image)
        if proc.returncode:
            raise RuntimeError("loading %s into the test host's engine failed: %s" % (image, proc.stderr.strip()))
        loaded.append(image)
    return loaded


def save(image, wanted, cache_dir):
    """``docker save`` of ``image`` (id ``wanted``) as ``<cache_dir>/<id>.tar``, made once."""
    archive = os.path.join(cache_dir, wanted.replace("sha256:", "") + ".tar")
    with _SAVING:
        if os.path.exists(archive):
            return archive
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        tmp = "%s.%d.tmp" % (archive, os.getpid())
        common.must("docker", "save", "--output", tmp, image)
        os.replace(tmp, archive)
    return archive


def stop(pid, word, wait=30.0):
    """Stop a dockerd (its containers stop with it: live-restore is off); SIGKILL after ``wait`` seconds."""
    common.stop(pid, word, wait=wait)
