"""ketch with SELinux "as if enabled": ``selinux_ketch.py SETTINGS-JSON ketch-args...``.

Test-only: installs ``support.selinux.FakeSelinux(**SETTINGS)`` in
``ketch.linux.label`` and runs ketch's command line, in this process (the
container init and exec's child are forked from it and keep the stand-in).
"""

import json
import os
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(os.path.dirname(TESTS), "src"), TESTS]

from ketch.linux import label  # noqa: E402
from support.selinux import FakeSelinux  # noqa: E402

label.use(FakeSelinux(**json.loads(sys.argv[1])))
sys.argv[1:2] = []

from ketch.cli.main import main  # noqa: E402

sys.exit(main())
