import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

# The network rule: tests send traffic only to loopback.  `--pull missing` is the
# default, so any test that names an image its store lacks would try a registry:
# the allow-list refuses every other host before a DNS query, and short names
# resolve against a loopback port nobody listens on.  setdefault: a run that sets
# them on purpose (a wider list, for a manual check) keeps its own.
LOOPBACK_REGISTRIES = "127.0.0.1:*,localhost:*,[::1]:*"
NOWHERE_REGISTRY = "127.0.0.1:1"
os.environ.setdefault("KETCH_REGISTRIES_ALLOWED", LOOPBACK_REGISTRIES)
os.environ.setdefault("KETCH_SEARCH_REGISTRIES", NOWHERE_REGISTRY)
