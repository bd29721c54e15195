"""The client side of the OCI distribution specification: pull, push and login.

    reference   image references parsed as Docker parses them
    platform    os/arch[/variant] and the choice of a manifest in an index
    auth        WWW-Authenticate, the auth file podman and Docker share, credential helpers
    transport   HTTP(S) with the certs.d conventions, retries, redirects
    client      one registry session: auth flow, token cache, manifests, blobs, uploads
    pull, push  what `ketch image pull|push` do with the image store
    login       what `ketch login|logout` do

Only the standard library (http.client, ssl, hashlib): nothing here is imported
on the runtime's start path, and the engine imports it only to pull or push.
"""

from .pull import pull  # noqa: F401
from .push import push  # noqa: F401
from .login import login, logout  # noqa: F401
