"""Run CNI plugins per the CNI specification (1.0): ADD, CHECK, DEL over a list.

A plugin is an executable in CNI_PATH; the runtime passes the operation in
the environment (CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME,
CNI_PATH) and the network configuration on stdin; it answers with a result
(ADD) or nothing (CHECK, DEL) on stdout and exit 0, or an error object
{"code", "msg", "details"} and a non-zero exit.  For a list, ADD runs the
plugins in order, each getting the previous one's result as prevResult;
DEL runs them in reverse with the result ADD returned (cached by the
caller); CHECK runs them in order with that result.
"""

from ketch import _json as json
import os

from ketch.errors import KetchError
from ketch.linux import eagain

DEFAULT_PATH = "/usr/lib/cni:/opt/cni/bin"


class CNIError(KetchError):
    """A plugin failed: names the plugin, the operation and the plugin's message."""

    def __init__(self, plugin, command, msg, code=None):
        super().__init__(f"network plugin {plugin} {command}: {msg}")
        self.plugin, self.command, self.code = plugin, command, code


def find_plugin(name, path=None):
    if "/" in name or not name:
        raise CNIError(name, "lookup", "invalid plugin name")
    for d in (path or os.environ.get("KETCH_CNI_PATH") or DEFAULT_PATH).split(":"):
        p = os.path.join(d, name)
        if d and os.access(p, os.X_OK):
            return p
    raise CNIError(name, "lookup", f"not found in {path or DEFAULT_PATH} (install containernetworking-plugins)")


def invoke(command, conf, container_id, netns, ifname, path=None, timeout=60):
    """Run the plugin conf["type"] for `command`; returns its parsed stdout (None when empty)."""
    import subprocess
    plugin = conf["type"]
    exe = find_plugin(plugin, path)
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
           "CNI_IFNAME": ifname, "CNI_PATH": path or os.environ.get("KETCH_CNI_PATH") or DEFAULT_PATH,
           # plugins run iptables and ip through PATH
           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    try:
        p = eagain.retry(subprocess.run, [exe], input=json.dumps(conf).encode(), env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=timeout, close_fds=True)
    except subprocess.TimeoutExpired:
        raise CNIError(plugin, command, f"no answer in {timeout} s") from None
    out = p.stdout.strip()
    if p.returncode != 0:
        msg = p.stderr.decode(errors="replace").strip() or f"exit status {p.returncode}"
        code = None
        try:
            err = json.loads(out)
            msg = err.get("msg") or msg
            if err.get("details"):
                msg += f" ({err['details']})"
            code = err.get("code")
        except ValueError:
            pass
        raise CNIError(plugin, command, msg, code)
    if not out:
        return None
    try:
        return json.loads(out)
    except ValueError:
        raise CNIError(plugin, command, f"unparsable result {out[:200]!r}") from None
