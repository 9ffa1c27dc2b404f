"""The ``brev`` commands: ls, create, start, stop, delete, refresh, login, logout (README.md has the contract).

Texts, exit codes and quirks follow the real CLI's source (brevdev/brev-cli, pkg/cmd/...)."""

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time

from . import auth, hosts, netns, store
from .catalog import BY_NAME, CATALOG, DEFAULT_MIN_CAPABILITY, DEFAULT_MIN_TOTAL_VRAM, Settings
from .flags import CliError, Flag, parse

VERSION = "v0.6.322"
LOGIN_PROMPT = "You are currently logged out, would you like to log in? [Y/n]: "
DEVICE_LOGIN = "device login is not available in the test platform: use brev login --token"
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$")
NOT_PROVIDED = ("shell", "open", "copy", "cp", "port-forward", "search", "gpu-search", "org", "set", "ssh-key",
                "reset", "recreate", "notebook", "ollama", "hello", "status", "invite", "scale", "register")
HELP = """
      brev client for managing instances (test platform stand-in)

Usage:
  brev [command]

Commands:
  create      Create GPU instances with automatic retry
  delete      Delete an instance
  exec        Execute a command on instance(s)
  login       Log into Brev
  logout      Log out of Brev
  ls          List instances within active org
  refresh     Force a refresh to the SSH config
  start       Start an instance if it's stopped, or create one from url
  stop        Stop an instance if it's running
"""


def piped(fd):
    """The real CLI's test: the stream is not a character device (a pipe, a file, a socket)."""
    try:
        return not stat.S_ISCHR(os.fstat(fd).st_mode)
    except OSError:
        return False


def out(text):
    """Write to stdout."""
    sys.stdout.write(text)
    sys.stdout.flush()


def err(text):
    """Write to stderr."""
    sys.stderr.write(text)
    sys.stderr.flush()


def multierror(messages):
    """hashicorp/go-multierror's text for a list of errors."""
    if len(messages) == 1:
        return "1 error occurred:\n\t* %s\n\n" % messages[0]
    return "%d errors occurred:\n\t%s\n\n" % (len(messages), "\n\t".join("* " + item for item in messages))


def stdin_names():
    """Instance names piped on stdin (one per line), as util.GetInstanceNamesWithPipeInfo reads them."""
    if not piped(0):
        return [], False
    try:
        lines = sys.stdin.read().splitlines()
    except (OSError, ValueError):
        lines = []
    return [line.strip() for line in lines if line.strip()], True


class Cli:
    """One invocation."""

    def __init__(self, settings):
        self.settings = settings
        self.store = store.Store(settings)

    # --- authentication -------------------------------------------------------------------------

    def require_login(self):
        """Continue when the credentials file gives a fresh access token (auth.GetFreshAccessTokenOrLogin);
        otherwise what the real CLI does: prompt on stdout, read stdin, fail."""
        try:
            if auth.fresh_access_token(self.settings, out):
                return
        except auth.CredentialsError as exc:
            raise CliError(str(exc)) from None
        out(LOGIN_PROMPT)
        try:
            line = sys.stdin.readline() if sys.stdin is not None else ""
        except (OSError, ValueError):
            line = ""
        if not line:
            raise CliError("EOF")
        if line.strip().lower() in ("y", ""):
            raise CliError(DEVICE_LOGIN)
        raise CliError("declined to login")

    def login(self, args):
        """``brev login --token T`` (or ``--api-key bak-... --org-id O``)."""
        values, positional = parse(args, [Flag("token"), Flag("api-key"), Flag("org-id"), Flag("skip-browser", kind="bool"),
                                          Flag("email"), Flag("auth")])
        if values["help"]:
            out("Log into brev\n\nUsage:\n  brev login\n\nFlags:\n      --token string   token provided to auto login\n")
            return 0
        if positional:
            raise CliError('unknown command "%s" for "brev login"' % positional[0])
        api_key = values["api-key"].strip()
        if api_key:
            if values["token"] or values["skip-browser"] or values["email"] or values["auth"]:
                raise CliError("api-key cannot be used with token, skip-browser, email, or auth flags")
            org_id = values["org-id"].strip()
            if not org_id:
                raise CliError("api key auth requires an org id; run brev login --api-key <api-key> --org-id <org-id>")
            if not api_key.startswith("bak-"):
                raise CliError("api key must start with bak-")
            auth.login_with_api_key(self.settings, api_key, org_id)
            with self.store.locked() as state:
                state["org"] = {"id": org_id, "name": org_id}
            out("API key saved for org %s\n" % org_id)
            return 0
        if values["org-id"].strip():
            raise CliError("org-id can only be used with api-key")
        if values["auth"] not in ("", "nvidia", "legacy"):
            raise CliError("auth provider must be nvidia or legacy")
        if values["email"] and values["auth"] == "legacy":
            raise CliError("email flag can only be used with nvidia auth provider")
        out("\n   \u25b8     Starting Login\n\n")
        token = values["token"]
        if not token:
            raise CliError(DEVICE_LOGIN)
        # LoginWithToken saves the token first; the user lookup that follows then needs a fresh access
        # token, and a refused one leaves the saved file behind (as the real CLI does).
        auth.login_with_token(self.settings, token)
        try:
            if not auth.fresh_access_token(self.settings, out):
                raise CliError("failed to refresh token: UNAUTHORIZED")
        except auth.CredentialsError as exc:
            raise CliError(str(exc)) from None
        with self.store.locked() as state:
            org = state["org"]["name"]
            count = len(state["instances"])
        text = "current organization: %s\n" % org
        text += "list your instances:\n\tbrev ls\n" if count else "create an instance:\n"
        out(text)
        return 0

    def logout(self, args):
        """``brev logout``: forget the login."""
        values, positional = parse(args, [])
        if values["help"]:
            out("Log out of brev\n\nUsage:\n  brev logout\n")
            return 0
        del positional
        auth.logout(self.settings)
        return 0

    # --- ls ---------------------------------------------------------------------------------------

    def info(self, instance):
        """One entry of ``brev ls --json`` (ls.WorkspaceInfo)."""
        itype = BY_NAME.get(instance["instance_type"])
        running = instance["status"] == "RUNNING"
        health = ""
        if running:
            health = "UNHEALTHY" if instance["name"] in self.settings.unhealthy else "HEALTHY"
        status = "UNHEALTHY" if running and health == "UNHEALTHY" else instance["status"]
        return {
            "name": instance["name"],
            "id": instance["id"],
            "status": status,
            "build_status": instance["build_status"],
            "shell_status": "READY" if running and instance["build_status"] == "COMPLETED" else "NOT READY",
            "health_status": health,
            "instance_type": instance["instance_type"],
            "instance_kind": itype.kind if itype else "gpu",
            "gpu": itype.gpu_name if itype else "-",
        }

    def ls(self, args):
        """``brev ls [--json] [--all] [orgs|instances|nodes]``."""
        values, positional = parse(args, [Flag("org", "o"), Flag("all", kind="bool"), Flag("json", kind="bool")])
        if values["help"]:
            out("List instances within your active org.\n\nUsage:\n  brev ls [flags]\n\nFlags:\n      --all    show all instances\n"
                "      --json   output as JSON\n  -o, --org string   organization\n")
            return 0
        self.require_login()
        with self.store.locked() as state:
            org = state["org"]
            api_key = auth.api_key_login(self.settings)
            instances = [self.info(item) for item in state["instances"]]
        if values["org"]:
            if api_key:
                raise CliError("api key auth is scoped to the org saved during login; --org is not supported")
            if values["org"] != org["name"]:
                raise CliError("no org found with name %s" % values["org"])
        if len(positional) > 1:
            raise CliError("too many args provided")
        kind = positional[0].lower().rstrip("s") if positional else "instance"
        if kind in ("org", "organization"):
            if api_key:
                raise CliError("api key auth cannot list organizations")
            if values["json"]:
                out(json.dumps([{"name": org["name"], "id": org["id"], "is_active": True}], indent=2) + "\n")
            else:
                out("Your organizations:\nNAME            ID\n* %s  %s\n" % (org["name"], org["id"]))
            return 0
        if kind == "node":
            out("[]\n" if values["json"] else "No external nodes in this org.\n")
            return 0
        if kind not in ("instance", "workspace"):
            return 0
        if values["json"]:
            out(json.dumps({"workspaces": instances or None}, indent=2, ensure_ascii=False) + "\n")
            return 0
        if not instances:
            out("No instances in org %s\n\n" % org["name"])
            return 0
        out("You have %d instances in Org %s\n" % (len(instances), org["name"]))
        rows = [["NAME", "STATUS", "BUILD", "SHELL", "ID", "MACHINE", "GPU"]]
        for item in instances:
            rows.append([item["name"], item["status"], item["build_status"], item["shell_status"], item["id"],
                         "%s (%s)" % (item["instance_type"], item["instance_kind"]), item["gpu"]])
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        for row in rows:
            out(" " + "  ".join(cell.ljust(widths[column]) for column, cell in enumerate(row)).rstrip() + "\n")
        out("\n")
        return 0

    # --- the API calls behind create/start/stop/delete --------------------------------------------

    def api_create(self, name, type_name, now=None):
        """CreateWorkspace: a new instance in the creation status (a taken name is refused)."""
        now = time.time() if now is None else now
        with self.store.locked() as state:
            if store.find(state, name):
                raise CliError("duplicate workspace with name %s" % name)
            taken = {item["address"] for item in state["instances"]}
            if self.settings.hosts == "netns":
                address = netns.allocate_address(self.settings, taken)
            else:
                address = hosts.allocate_address(self.settings, taken)
            taken = {item["id"] for item in state["instances"]}
            new = store.new_id()
            while new in taken:
                new = store.new_id()
            instance = {
                "id": new, "name": name, "instance_type": type_name, "address": address,
                "status": self.settings.create_status, "since": now, "until": now + self.settings.start_seconds,
                "build_status": "PENDING", "status_message": "", "created_at": store.iso(now), "hosts": self.settings.hosts,
            }
            state["instances"].append(instance)
            if instance["hosts"] == "netns":
                netns.spawn(self.settings, instance, "up")
            return dict(instance)

    def api_get(self, instance_id):
        """GetWorkspace (None once it is gone)."""
        with self.store.locked() as state:
            for item in state["instances"]:
                if item["id"] == instance_id:
                    return dict(item)
        return None

    def lookup(self, state, name_or_id):
        """util.GetUserWorkspaceByNameOrIDErr."""
        found = store.find(state, name_or_id)
        if not found:
            raise CliError("instance with id/name %s not found" % name_or_id)
        return found[0]

    def wait_running(self, instance_id, timeout=None):
        """Poll until RUNNING; returns the instance, or raises with the create command's messages."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self.api_get(instance_id)
            if current is None:
                raise CliError("instance %s not found" % instance_id)
            if current["status"] == "RUNNING":
                return current
            if timeout is not None and current["status"] == "FAILURE":
                message = current.get("status_message")
                raise CliError("instance %s failed: %s" % (current["name"], message) if message else "instance %s failed" % current["name"])
            if deadline is not None and time.monotonic() >= deadline:
                raise CliError("timeout waiting for instance to be ready")
            time.sleep(self.settings.poll_seconds)

    # --- create -----------------------------------------------------------------------------------

    CREATE_FLAGS = [
        Flag("name", "n"), Flag("type", "t"), Flag("count", "c", "int", 1), Flag("parallel", "p", "int", 1),
        Flag("detached", "d", "bool"), Flag("timeout", kind="int", default=300), Flag("startup-script", "s"),
        Flag("dry-run", kind="bool"), Flag("mode", "m", default="vm"), Flag("jupyter", kind="bool", default=True),
        Flag("container-image"), Flag("compose-file"), Flag("launchable", "l"), Flag("gpu-name", "g"), Flag("provider"),
        Flag("min-vram", "v", "float"), Flag("min-total-vram", kind="float"), Flag("min-capability", kind="float"),
        Flag("min-disk", kind="float"), Flag("max-boot-time", kind="int"), Flag("stoppable", kind="bool"),
        Flag("rebootable", kind="bool"), Flag("flex-ports", kind="bool"), Flag("sort", default="price"), Flag("desc", kind="bool"),
    ]

    @staticmethod
    def validate_create(values, name):
        """The checks the real create makes before it talks to the API."""
        if values["launchable"]:
            raise CliError("launchables are not available in the test platform")
        mode = values["mode"]
        if mode not in ("vm", "k8s", "container", "compose"):
            raise CliError('invalid mode "%s": must be one of vm, k8s, container, compose' % mode)
        if mode == "container" and not values["container-image"]:
            raise CliError("--container-image is required for container mode")
        if mode == "compose" and not values["compose-file"]:
            raise CliError("--compose-file is required for compose mode")
        if not name:
            raise CliError("name is required")
        if len(name) > 63:
            raise CliError("name must be 63 characters or fewer (got %d)" % len(name))
        if not NAME_RE.match(name):
            raise CliError("name must start with a letter or digit and contain only letters, digits, hyphens, underscores, and dots")
        if values["count"] < 1:
            raise CliError("--count must be at least 1")
        script = values["startup-script"]
        if script.startswith("@"):
            try:
                with open(script[1:], encoding="utf-8") as handle:
                    handle.read()
            except OSError as exc:
                raise CliError("open %s: %s" % (script[1:], exc.strerror.lower() if exc.strerror else exc)) from None

    @staticmethod
    def requested_types(values):
        """Types from --type and from stdin (a JSON array of {"type": ...} or ``brev search``'s table)."""
        types = [part.strip() for part in values["type"].split(",") if part.strip()]
        if piped(0):
            try:
                text = sys.stdin.read().strip()
            except (OSError, ValueError):
                text = ""
            if text.startswith("["):
                try:
                    types.extend(str(item.get("type", "")) for item in json.loads(text) if isinstance(item, dict))
                except ValueError as exc:
                    raise CliError(str(exc)) from None
            elif text:
                for number, line in enumerate(text.splitlines()):
                    fields = line.split()
                    if not fields or (number == 0 and ("TYPE" in line or "GPU" in line)) or line.strip().startswith("Found "):
                        continue
                    word = fields[0]
                    if len(word) >= 2 and any(char.isalpha() for char in word) and any(char.isdigit() for char in word):
                        types.append(word)
        return types

    @staticmethod
    def searched_types(values):
        """The automatic choice: GPU types matching the filters merged with the real defaults, sorted."""
        min_total = values["min-total-vram"] or DEFAULT_MIN_TOTAL_VRAM
        min_capability = values["min-capability"] or DEFAULT_MIN_CAPABILITY
        chosen = []
        for item in CATALOG:
            if not item.count:
                continue
            if values["gpu-name"] and values["gpu-name"].lower() not in item.gpu.lower():
                continue
            if item.vram < values["min-vram"] or item.vram * item.count < min_total or item.capability < min_capability:
                continue
            if values["stoppable"] and not item.stoppable:
                continue
            chosen.append(item)
        key = {"vram": lambda item: item.vram, "total-vram": lambda item: item.vram * item.count,
               "capability": lambda item: item.capability}.get(values["sort"], lambda item: item.price)
        chosen.sort(key=key, reverse=values["desc"])
        return [item.name for item in chosen]

    def create(self, args):
        """``brev create NAME [--type T[,T...]] [--gpu-name G] [--detached] [--timeout S] ...``."""
        values, positional = parse(args, self.CREATE_FLAGS)
        if values["help"]:
            out("Create GPU instances with automatic retry\n\nUsage:\n  brev create [name] [flags]\n")
            return 0
        name = values["name"] or (positional[0] if positional else "")
        self.validate_create(values, name)
        types = self.requested_types(values)
        if not types:
            types = self.searched_types(values)
            if not types:
                raise CliError("no GPU instances match the specified filters. Try 'brev search' to see available options")
        if values["dry-run"]:
            out(", ".join(types) + "\n")
            return 0
        self.require_login()
        stdout_piped = piped(1)
        log = err if stdout_piped else out
        count = values["count"]
        log("Attempting to create %d instance(s) with %d parallel attempts\n" % (count, max(1, values["parallel"])))
        log("Instance types to try: %s\n\n" % ", ".join(types))
        created = []
        for type_name in types:
            if len(created) >= count:
                break
            remaining = count - len(created)
            log("Trying %s for %d instance(s)...\n" % (type_name, remaining))
            had_failure, fatal = self.create_with_type(log, name, type_name, len(created), remaining, count, created)
            if fatal:
                log("\nError: %s\n" % fatal)
                break
            if not had_failure and len(created) >= count:
                break
            if len(created) < count and had_failure:
                log("\nType %s had failures, trying next type...\n\n" % type_name)
        if len(created) < count:
            log("\nWarning: Only created %d/%d instances\n" % (len(created), count))
            if created:
                log("Successfully created instances:\n")
                for item in created:
                    log("  - %s (ID: %s)\n" % (item["name"], item["id"]))
            raise CliError("could only create %d/%d instances" % (len(created), count))
        if not values["detached"]:
            log("\nWaiting for instance(s) to be ready...\n")
            log("You can safely ctrl+c to exit\n")
            for item in created:
                try:
                    self.wait_running(item["id"], timeout=max(values["timeout"], 0))
                    log("  %s: Ready\n" % item["name"])
                except CliError as exc:
                    if "timeout waiting" in str(exc):
                        log("  %s: Timeout waiting for ready state\n" % item["name"])
                    else:
                        log("  %s: %s\n" % (item["name"], exc))
        if stdout_piped:
            out("".join(item["name"] + "\n" for item in created))
            return 0
        out("\nSuccessfully created %d instance(s)!\n\n" % len(created))
        for item in created:
            out("Instance: %s\n  ID: %s\n  Type: %s\n" % (item["name"], item["id"], item["instance_type"]))
            out("  Connect:\n    brev open %s\n    brev shell %s\n\n" % (item["name"], item["name"]))
        return 0

    def create_with_type(self, log, name, type_name, start, remaining, count, created):
        """createInstancesWithType: returns (had a failure, fatal error text or "")."""
        itype = BY_NAME.get(type_name)
        if itype is None:
            log("Skipping: instance type \"%s\" is not a recognized type; run 'brev search' to see available types\n" % type_name)
            return True, ""
        if type_name in self.settings.no_capacity:
            log("Skipping: instance type \"%s\" is currently unavailable (no capacity); try again later or run 'brev search' to find "
                "another type\n" % type_name)
            return True, ""
        had_failure = False
        fatal = ""
        for index in range(start, start + remaining):
            instance_name = "%s-%d" % (name, index + 1) if count > 1 else name
            log("[Worker 1] Trying %s for instance '%s'...\n" % (type_name, instance_name))
            try:
                instance = self.api_create(instance_name, type_name)
            except CliError as exc:
                log("[Worker 1] %s Failed: %s\n" % (type_name, exc))
                had_failure = True
                if "duplicate workspace" in str(exc):
                    fatal = "workspace '%s' already exists. Use a different name or delete the existing workspace" % instance_name
                continue
            log("[Worker 1] %s Success! Created instance '%s'\n" % (type_name, instance_name))
            created.append(instance)
        return had_failure, fatal

    # --- start ------------------------------------------------------------------------------------

    def start(self, args):
        """``brev start NAME [--detached]``: start a STOPPED instance (or create an empty one with --name)."""
        values, positional = parse(args, [Flag("detached", "d", "bool"), Flag("empty", "e", "bool"), Flag("name", "n"),
                                          Flag("setup-script", "s"), Flag("setup-repo", "r"), Flag("setup-path", "p"),
                                          Flag("org", "o"), Flag("gpu", "g", default="n1-highmem-4:nvidia-tesla-t4:1")])
        if values["help"]:
            out("Start a Brev machine that's in a paused or off state or create one from a url\n\nUsage:\n  brev start [flags]\n")
            return 0
        extra, stdin_piped = stdin_names()
        names = positional + extra
        stdout_piped = piped(1)
        if stdin_piped and names:
            started = []
            problems = []
            for name in names:
                try:
                    self.start_one(name, values, detached=True)
                    started.append(name)
                except CliError as exc:
                    err("Error starting %s: %s\n" % (name, exc))
                    problems.append(str(exc))
            if problems:
                raise CliError(multierror(problems))
            if stdout_piped:
                out("".join(name + "\n" for name in started))
            return 0
        target = names[0] if names else ""
        self.start_one(target, values, detached=values["detached"])
        if stdout_piped and target:
            out(target + "\n")
        return 0

    def start_one(self, target, values, detached):
        """runStartWorkspace for one argument."""
        self.require_login()
        if not target:
            self.start_empty(values, detached)
            return
        if "https://" in target or "git@" in target:
            raise CliError("creating an instance from a git URL is not available in the test platform")
        with self.store.locked() as state:
            found = store.find(state, target)
            if found:
                instance = found[0]
                if instance["status"] != "STOPPED":
                    raise CliError("Instance is not stopped status=%s" % instance["status"])
                store.set_status(self.settings, instance, "STARTING", self.settings.start_seconds)
                instance = dict(instance)
        if not found:
            if os.path.exists(target):
                raise CliError("Could not read .git/config at %s" % target)
            out("tried to start with local path but path not found\n")
            return
        if values["name"]:
            out("Existing instance found. Name flag ignored.\n")
        out("Instance %s is starting. \nNote: this can take about a minute. Run 'brev ls' to check status\n\n" % instance["name"])
        if detached:
            return
        out("You can safely ctrl+c to exit\n")
        self.wait_running(instance["id"])
        out("\nYour instance is ready!\n")
        self.breadcrumb(instance["name"])

    def start_empty(self, values, detached):
        """``brev start --name N``: the legacy empty-instance creation."""
        name = values["name"]
        if not name:
            raise CliError("name field is required for empty workspaces")
        with self.store.locked() as state:
            org = state["org"]
        if values["org"] and values["org"] != org["name"]:
            raise CliError("no org with name %s" % values["org"])
        out("Creating instance %s in org %s\n\tname %s\n\tGPU instance %s\n\tCloud \n\n" % (name, org["id"], name, values["gpu"]))
        instance = self.api_create(name, values["gpu"])
        if detached:
            return
        out("You can safely ctrl+c to exit\n")
        self.wait_running(instance["id"])
        out("\nYour instance is ready!\n")
        self.breadcrumb(name)

    @staticmethod
    def breadcrumb(name):
        """displayConnectBreadCrumb of start."""
        out("Connect to the instance:\n\tbrev open %s\t# brev open <NAME> -> open instance in VS Code\n"
            "\tbrev shell %s\t# brev shell <NAME> -> ssh into instance (shortcut)\n" % (name, name))

    # --- stop and delete --------------------------------------------------------------------------

    def stop(self, args):
        """``brev stop NAME... | --all``."""
        values, positional = parse(args, [Flag("all", "a", "bool")])
        if values["help"]:
            out("Stop a Brev machine that's in a running state\n\nUsage:\n  brev stop [flags]\n")
            return 0
        stdout_piped = piped(1)
        if values["all"]:
            return self.stop_all(stdout_piped)
        extra, stdin_piped = stdin_names()
        del stdin_piped
        names = positional + extra
        if not names:
            raise CliError("instance name required: provide as argument or pipe from another command")
        self.require_login()
        problems = []
        stopped = []
        for name in names:
            try:
                with self.store.locked() as state:
                    instance = self.lookup(state, name)
                    itype = BY_NAME.get(instance["instance_type"])
                    if instance["instance_type"] in self.settings.unstoppable or (itype is not None and not itype.stoppable):
                        raise CliError('instance "%s" does not support stop.' % instance["name"])
                    if instance["status"] != "RUNNING":
                        raise CliError("workspace status %s is not RUNNING" % instance["status"])
                    store.set_status(self.settings, instance, "STOPPING", self.settings.stop_seconds)
                stopped.append(name)
                if not stdout_piped:
                    out("Stopping instance %s.\nNote: this can take a few seconds. Run 'brev ls' to check status\n" % name)
            except CliError as exc:
                problems.append(str(exc))
        if problems:
            raise CliError(multierror(problems))
        if stdout_piped:
            out("".join(name + "\n" for name in stopped))
        return 0

    def stop_all(self, stdout_piped):
        """``brev stop --all``: every RUNNING instance that can stop."""
        self.require_login()
        if not stdout_piped:
            out("Turning off all of your instances")
        stopped = []
        with self.store.locked() as state:
            for instance in state["instances"]:
                if instance["status"] != "RUNNING":
                    continue
                itype = BY_NAME.get(instance["instance_type"])
                if instance["instance_type"] in self.settings.unstoppable or (itype is not None and not itype.stoppable):
                    if not stdout_piped:
                        out("\n%s skipped (does not support stop)" % instance["name"])
                    continue
                store.set_status(self.settings, instance, "STOPPING", self.settings.stop_seconds)
                stopped.append(instance["name"])
                if not stdout_piped:
                    out("\n%s stopped \u2713" % instance["name"])
        if stdout_piped:
            out("".join(name + "\n" for name in stopped))
        return 0

    def delete(self, args):
        """``brev delete NAME...``."""
        values, positional = parse(args, [])
        if values["help"]:
            out("Delete an instance\n\nUsage:\n  brev delete <ws_name>...\n")
            return 0
        extra, stdin_piped = stdin_names()
        del stdin_piped
        names = positional + extra
        if not names:
            raise CliError("instance name required: provide as argument or pipe from another command")
        self.require_login()
        stdout_piped = piped(1)
        problems = []
        deleted = []
        for name in names:
            try:
                with self.store.locked() as state:
                    instance = self.lookup(state, name)
                    if instance["status"] != "DELETING":
                        store.set_status(self.settings, instance, "DELETING", self.settings.delete_seconds)
                    label = instance["name"]
                deleted.append(name)
                if not stdout_piped:
                    out("Deleting instance %s. This can take a few minutes. Run 'brev ls' to check status\n" % label)
            except CliError as exc:
                problems.append(str(exc))
        if problems:
            raise CliError(multierror(problems))
        if stdout_piped:
            out("".join(name + "\n" for name in deleted))
        return 0

    # --- exec -------------------------------------------------------------------------------------

    def exec_(self, args):
        """``brev exec [instance...] <command> [--host]``: the command (ONE last argument) over ssh."""
        values, positional = parse(args, [Flag("host", kind="bool")])
        if values["help"]:
            out("Execute a command on one or more instances non-interactively\n\nUsage:\n  brev exec [instance...] <command>\n")
            return 0
        if not positional:
            raise CliError("requires at least 1 arg(s), only received 0")
        command = positional[-1]
        extra, stdin_piped = stdin_names()
        del stdin_piped
        names = positional[:-1] + extra
        if not names:
            raise CliError("instance name required: provide as argument or pipe from another command")
        if command.startswith("@"):
            try:
                with open(command[1:], encoding="utf-8") as handle:
                    command = handle.read()
            except OSError as exc:
                raise CliError("open %s: %s" % (command[1:], (exc.strerror or str(exc)).lower())) from None
        if not command:
            raise CliError("command is required")
        problems = []
        for name in names:
            if len(names) > 1:
                err("\n=== %s ===\n" % name)
            try:
                self.exec_one(name, values["host"], command)
            except CliError as exc:
                if len(names) > 1:
                    err("Error on %s: %s\n" % (name, exc))
                    problems.append(str(exc))
                    continue
                raise
            if piped(1):
                out(name + "\n")
        if problems:
            raise CliError(multierror(problems))
        return 0

    def user_ssh_config(self):
        """The stand-in home's ``~/.ssh/config`` (what ``ssh`` reads on a Brev user's machine)."""
        path = os.path.join(self.settings.home, ".ssh", "config")
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            hosts.write_file(path, "", 0o600)
        return path

    def run_ssh(self, alias, command, connect_timeout):
        """runSSHWithTimeout: ``ssh -T -o ConnectTimeout=N -o LogLevel=ERROR <alias> '<command>'``, output inherited."""
        line = "ssh -F %s -T -o ConnectTimeout=%d -o LogLevel=ERROR %s '%s'" % (
            shlex.quote(self.user_ssh_config()), connect_timeout, shlex.quote(alias), command.replace("'", "'\\''"))
        sys.stdout.flush()
        return subprocess.run(["bash", "-c", line], stdin=subprocess.DEVNULL, check=False).returncode

    def wait_ssh(self, alias):
        """WaitForSSHToBeAvailable: ``ssh <alias> echo`` until it answers (40 tries)."""
        last = ""
        for attempt in range(41):
            proc = subprocess.run(["ssh", "-F", self.user_ssh_config(), "-o", "ConnectTimeout=10", alias, "echo", " "],
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
            if proc.returncode == 0:
                return
            lines = proc.stdout.splitlines() + proc.stderr.splitlines()
            last = lines[-1] if lines else ""
            if attempt == 40 or not any(word in last for word in ("Connection refused", "Operation timed out", "Connection timed out",
                                                                  "Connection closed", "No route to host")):
                break
            time.sleep(self.settings.poll_seconds)
        raise CliError("\n" + last)

    def exec_one(self, name, host, command):
        """runExecCommand: try once; on failure look the instance up, start it if STOPPED, refresh, try again."""
        alias = name + "-host" if host else name
        code = self.run_ssh(alias, command, 5)
        if code == 0:
            return
        err("Connection failed, checking instance status...\n")
        self.require_login()
        with self.store.locked() as state:
            found = store.find(state, name)
            instance = dict(found[0]) if found else None
            if instance and instance["status"] == "STOPPED":
                store.set_status(self.settings, found[0], "STARTING", self.settings.start_seconds)
        if instance is None:
            raise CliError('ssh connection failed and could not look up instance "%s": exit status %d\n'
                           "Please check your instances with: brev ls" % (name, code))
        if instance["status"] not in ("STOPPED", "RUNNING"):
            raise CliError('instance "%s" is in state "%s" \u2014 please check with: brev ls' % (name, instance["status"]))
        if instance["status"] == "STOPPED":
            self.wait_running(instance["id"], timeout=600)
        with self.store.locked() as state:
            hosts.write_ssh_config(self.settings, [item for item in state["instances"] if item["status"] == "RUNNING"])
        alias = instance["name"] + "-host" if host else instance["name"]
        try:
            self.wait_ssh(alias)
        except CliError as exc:
            raise CliError('could not connect to instance "%s": %s\nPlease check with: brev ls' % (name, exc)) from None
        code = self.run_ssh(alias, command, 10)
        if code:
            raise CliError("exit status %d" % code)

    # --- refresh ----------------------------------------------------------------------------------

    def refresh(self, args):
        """``brev refresh``: rewrite the SSH config from the RUNNING instances."""
        values, positional = parse(args, [])
        if values["help"]:
            out("Force a refresh to the SSH config\n\nUsage:\n  brev refresh\n")
            return 0
        del positional
        out("refreshing brev...\n")
        self.require_login()
        with self.store.locked() as state:
            running = [item for item in state["instances"] if item["status"] == "RUNNING"]
            hosts.write_ssh_config(self.settings, running)
        out("brev has been refreshed\n")
        return 0


def command_index(argv):
    """Where the subcommand is (cobra finds it past the root's flags)."""
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--user":
            index += 2
            continue
        if arg == "--":
            return index + 1 if index + 1 < len(argv) else None
        if not arg.startswith("-") or arg == "-":
            return index
        index += 1
    return None


def record(settings, argv):
    """Append this call's argv (JSON, one line) to ``argv.log``: what a test checks for secrets on command lines."""
    os.makedirs(settings.dir, exist_ok=True)
    line = (json.dumps(argv) + "\n").encode("utf-8")
    fd = os.open(settings.path("argv.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def main(argv):
    """Run one ``brev`` command; returns the exit code."""
    cli = Cli(Settings())
    record(cli.settings, argv)
    if auth.unplaced_access_token(cli.settings):
        out("no oauth found for token\n")  # auth.StandardLogin, before any command runs
    commands = {"ls": cli.ls, "list": cli.ls, "create": cli.create, "provision": cli.create, "start": cli.start,
                "stop": cli.stop, "delete": cli.delete, "exec": cli.exec_, "refresh": cli.refresh, "login": cli.login, "logout": cli.logout}
    try:
        index = command_index(argv)
        if index is None:
            values = parse(argv, [])[0]
            if values["version"]:
                out("Current Version: %s\n" % VERSION)
            else:
                out(HELP)
            return 0
        name = argv[index]
        rest = argv[:index] + argv[index + 1:]
        if name == "help":
            out(HELP)
            return 0
        if name in NOT_PROVIDED:
            raise CliError('"brev %s" is not available in the test platform' % name)
        command = commands.get(name)
        if command is None:
            raise CliError('unknown command "%s" for "brev"' % name)
        return command(rest)
    except CliError as exc:
        err(str(exc) + "\n")
        return 1
    except KeyboardInterrupt:
        return 130
