"""Messages to the user and to --log.

runc writes logrus records to --log; containerd's shim reads the JSON form
(`{"level":"error","msg":"...","time":"..."}`) to report why a create
failed, so the json format must keep those three keys.  Errors always also
go to stderr as one line (`ketch: <message>`) when --log is not stderr.
"""

import os
import sys

_state = {"path": "", "format": "text", "debug": False}


def now_rfc3339():
    import time

    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%09dZ" % int((t % 1) * 1e9)


def configure(path, fmt, debug):
    _state["path"] = path
    _state["format"] = fmt
    _state["debug"] = debug


def _record(level, msg):
    if _state["format"] == "json":
        from . import _json as json

        return json.dumps({"level": level, "msg": msg, "time": now_rfc3339()}) + "\n"
    esc = msg.replace("\\", "\\\\").replace('"', '\\"')
    return f'time="{now_rfc3339()}" level={level} msg="{esc}"\n'


def _to_log(level, msg):
    path = _state["path"]
    if not path:
        return False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return False
    try:
        os.write(fd, _record(level, msg).encode())
    finally:
        os.close(fd)
    return True


def error(msg):
    _to_log("error", msg)
    try:
        sys.stderr.write(f"ketch: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def warning(msg):
    if not _to_log("warning", msg):
        try:
            sys.stderr.write(f"ketch: warning: {msg}\n")
        except (OSError, ValueError):
            pass


def debug(msg):
    if _state["debug"]:
        if not _to_log("debug", msg):
            sys.stderr.write(f"ketch: debug: {msg}\n")
