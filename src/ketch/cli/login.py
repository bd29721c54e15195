"""ketch login: check credentials against a registry and record them in the auth file."""

import sys

from .main import Flag
from .registry import TLS_FLAGS

USAGE = "[options] REGISTRY"
NARGS = (1, 1)
FLAGS = [f for f in TLS_FLAGS if f.dest != "creds"] + [
    Flag(("--username", "-u"), "str", default="", help="user name"),
    Flag(("--password", "-p"), "str", default="", help="password (prefer --password-stdin)"),
    Flag(("--password-stdin",), help="read the password from stdin"),
]


def run(g, opts, args):
    from ..engine.registry import login
    from ..errors import UsageError
    user, pw = opts["username"], opts["password"]
    if opts["password_stdin"]:
        if pw:
            raise UsageError("ketch login: --password and --password-stdin are mutually exclusive")
        if not user:
            raise UsageError("ketch login: --password-stdin needs --username")
        pw = sys.stdin.readline().rstrip("\r\n")
    if not user:
        if not sys.stdin.isatty():
            raise UsageError("ketch login: --username is required when stdin is not a terminal")
        user = input("Username: ").strip()
    if not pw:
        import getpass
        pw = getpass.getpass("Password: ")
    if not user or not pw:
        raise UsageError("ketch login: a username and a password are required")
    login(args[0], user, pw, tls_verify=opts["tls_verify"], cert_dir=opts["cert_dir"] or None,
          auth_file=opts["authfile"] or None)
    sys.stdout.write("Login Succeeded!\n")
    return 0
