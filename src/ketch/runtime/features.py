"""The `features` document (runtime-spec features.md shape, as runc prints it)."""


def features():
    from ..linux import mountopts
    from ..spec.default import OCI_VERSION

    opts = set(mountopts.FLAG_OPTIONS) | set(mountopts.PROPAGATION_OPTIONS) | \
        set(mountopts.RECURSIVE_OPTIONS) | set(mountopts.EXTENSION_OPTIONS)
    doc = {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": sorted(opts),
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": _caps(),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": _seccomp(),
            "apparmor": {"enabled": True},
            "selinux": {"enabled": True},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": True}},
        },
        "annotations": {
            "io.github.ketch.version": _version(),
        },
    }
    return doc


def _version():
    from .. import __version__

    return __version__


def _caps():
    from ..linux import capabilities

    return [capabilities.name(i) for i in range(capabilities.last_cap() + 1)]


def _seccomp():
    try:
        from ..linux import seccomp
        info = seccomp.features()
    except Exception:  # noqa: BLE001 - libseccomp missing is a feature answer, not an error
        return {"enabled": False}
    return info
