# ketch developer entry points.  Everything runs as root on Debian 12.
PY      ?= /usr/bin/python3
VENV    := $(CURDIR)/.venv
KETCH   := $(VENV)/bin/ketch
ROOTFS  := $(CURDIR)/build/busybox-rootfs

.PHONY: setup demo test unit integration security bench bench-engine clean faults stress fuzz soak

# System packages, a venv on Debian's python (never a version-manager shim:
# the shim costs ~100 ms on every container start), ketch installed in it,
# bytecode compiled (PYTHONDONTWRITEBYTECODE=1 would otherwise recompile
# every module on every start).
setup: $(VENV)/.done
$(VENV)/.done: pyproject.toml scripts/setup-system scripts/write-launcher
	bash scripts/setup-system
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
	bash scripts/write-launcher $(VENV)
	$(VENV)/bin/python -m compileall -q src
	touch $@

demo: setup
	$(VENV)/bin/python -m compileall -q src
	$(KETCH) demo

test: setup
	$(VENV)/bin/python -m compileall -q src
	$(VENV)/bin/python -m pytest -q tests

unit: setup
	$(VENV)/bin/python -m pytest -q tests/unit

integration: setup
	$(VENV)/bin/python -m pytest -q tests/integration

security: setup
	$(VENV)/bin/python -m pytest -q tests/security

# Issue 18's long runs (each takes the integration lock's place: run them
# alone).  faults: SIGKILL and injected errors at every system call of every
# scenario; stress: 50 commands on one container, 100 creates at once;
# fuzz: hypothesis with a big budget; soak: 2,000 + 500 cycles, slopes.
faults: setup
	$(VENV)/bin/python tests/reliability/kill_window.py --rounds 200
	$(VENV)/bin/python tests/reliability/faults.py --all --stride $${STRIDE:-1}

stress: setup
	$(VENV)/bin/python tests/reliability/concurrency.py --same 50 --creates 100

fuzz: setup
	KETCH_FUZZ_EXAMPLES=$${KETCH_FUZZ_EXAMPLES:-500} KETCH_FUZZ_RANDOM=1 $(VENV)/bin/python -m pytest -q tests/integration/test_fuzz.py

soak: setup
	$(VENV)/bin/python tests/reliability/soak.py --cycles 2000 --engine-cycles 500

bench: setup
	$(VENV)/bin/python bench/startup.py

# The engine (ketch container) against podman, and ketch against runc under containerd.
bench-engine: setup
	$(VENV)/bin/python bench/engine.py

clean:
	rm -rf $(VENV) build
