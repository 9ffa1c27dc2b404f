"""Processes by pid, commands and files: what every test host needs."""

import os
import signal
import subprocess
import time


def run(*args, **kwargs):
    """Run a command (stdin closed, output captured as text); never raises on its exit code."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(list(args), capture_output=True, text=True, check=False, **kwargs)


def must(*args, **kwargs):
    """Run a command; a non-zero exit raises RuntimeError with the command and its stderr."""
    proc = run(*args, **kwargs)
    if proc.returncode:
        raise RuntimeError("%s: %s" % (" ".join(args), (proc.stderr or proc.stdout).strip()))
    return proc


def write_file(path, text, mode=0o644):
    """Replace ``path`` atomically with ``text``."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def update_file(path, text, mode=0o644):
    """Write ``path`` only when its text differs; True when it was written."""
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return False
    except OSError:
        pass
    write_file(path, text, mode)
    return True


def cmdline(pid):
    """The command line of ``pid`` joined with spaces ("" when it is gone)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def stat_fields(pid):
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None."""
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def running(pid, word=None):
    """Whether ``pid`` lives (not a zombie) and, when ``word`` is given, its command line mentions it."""
    fields = stat_fields(pid) if pid and pid > 0 else None
    if not fields or fields[0] == "Z":
        return False
    return word is None or word in cmdline(pid)


def pid_from(path, word):
    """The pid written in ``path`` when that process runs and its command line mentions ``word``, else None."""
    try:
        with open(path, encoding="utf-8") as handle:
            pid = int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if running(pid, word) else None


def children(pid):
    """The pids whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields and fields[1] == str(pid):
                found.append(int(entry))
    return found


def signal_pids(pids, sig=signal.SIGTERM):
    """Send ``sig`` to each pid that still exists."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop(pid, word=None, wait=10.0, kill_after=True):
    """SIGTERM ``pid`` and wait until it is gone (zombies count as gone); SIGKILL after ``wait`` seconds."""
    if not running(pid, word):
        return
    signal_pids([pid])
    deadline = time.monotonic() + wait
    while running(pid, word):
        if time.monotonic() > deadline:
            if kill_after:
                signal_pids([pid], signal.SIGKILL)
                time.sleep(0.2)
            return
        time.sleep(0.05)


def host_addresses():
    """IPv4 addresses configured on this machine's interfaces."""
    proc = run("ip", "-o", "-4", "addr", "show")
    found = set()
    for line in proc.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            found.add(fields[fields.index("inet") + 1].split("/")[0])
    return found
