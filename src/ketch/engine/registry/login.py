"""`ketch login|logout`: check credentials against a registry's /v2/, then record or forget them.

Apart from auth.py because it opens a Session, and client.py needs auth.py (no cycle)."""

from ketch.errors import ImageError

from . import allow
from .auth import registry_host, remove_credentials, store_credentials
from .client import Session


def login(host, user, password, tls_verify=True, cert_dir=None, auth_file=None):
    """Check the credentials against the registry's /v2/, then record them.  Returns the file."""
    host = registry_host(host)
    try:
        Session(host, creds=(user, password), tls_verify=tls_verify, cert_dir=cert_dir, use_auth_file=False).ping()
    except allow.NotAllowed as e:
        raise ImageError(f"login {host}: {e}") from None
    return store_credentials(host, user, password, auth_file)


def logout(host, auth_file=None):
    host = registry_host(host)
    if not remove_credentials(host, auth_file):
        raise ImageError(f"not logged in to {host}")
