"""ketch demo: build the built-in busybox rootfs and run a container in it."""

from .main import Flag

USAGE = "[command options] [command...]"
NARGS = (0, None)
FLAGS = [Flag(("--dir",), "str", default="", help="where to build the demo bundle (default: a temp dir)")]


def run(g, opts, args):
    import json
    import os
    import shutil
    import tempfile

    from .. import busybox
    from ..runtime import container
    from ..spec.default import default_spec

    base = opts["dir"] or tempfile.mkdtemp(prefix="ketch-demo-")
    try:
        busybox.make_rootfs(os.path.join(base, "rootfs"))
        cfg = default_spec(terminal=False, args=args or [
            "sh", "-c", 'echo "Hello from a ketch container: $(hostname), pid $$, uid $(id -u)"; '
                        'echo "mounts: $(wc -l < /proc/self/mountinfo), kernel $(uname -r)"'])
        with open(os.path.join(base, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        opts_ = container.CreateOptions(bundle=base, detach=False)
        return container.run(g.store(), f"ketch-demo-{os.getpid()}", opts_)
    finally:
        if not opts["dir"]:
            shutil.rmtree(base, ignore_errors=True)
