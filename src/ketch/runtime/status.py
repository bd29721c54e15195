"""Container status and the transitions the runtime allows between them.

A status is never trusted from a file alone: ``store.Container.status()``
works it out from the kernel each time (pid alive with the same start time,
exec fifo present, freezer state).
"""

CREATING = "creating"
CREATED = "created"
RUNNING = "running"
PAUSED = "paused"
STOPPED = "stopped"

ALL = (CREATING, CREATED, RUNNING, PAUSED, STOPPED)

# from -> statuses reachable by one runtime operation or by the process exiting.
TRANSITIONS = {
    CREATING: {CREATED, STOPPED},
    CREATED: {RUNNING, STOPPED},
    RUNNING: {PAUSED, STOPPED},
    PAUSED: {RUNNING, STOPPED},
    STOPPED: set(),
}

# Which verbs each status admits (verb -> statuses), the table every verb checks.
VERB_ALLOWED = {
    "start": {CREATED},
    "kill": {CREATED, RUNNING, PAUSED},
    "delete": {STOPPED},
    "delete --force": set(ALL),
    "pause": {RUNNING},
    "resume": {PAUSED},
    "exec": {CREATED, RUNNING},
    "update": {CREATED, RUNNING, PAUSED},
    "ps": {CREATED, RUNNING, PAUSED},
    "events": {CREATED, RUNNING, PAUSED},
}


def can_transition(src, dst):
    return dst in TRANSITIONS.get(src, ())


def check_verb(verb, status, cid):
    from ..errors import InvalidState, NotRunning

    if status in VERB_ALLOWED[verb]:
        return
    if verb == "delete":
        raise InvalidState(f"cannot delete container {cid!r} that is {status}: stop it first or use --force")
    if verb == "start":
        if status == STOPPED:
            raise InvalidState(f"cannot start container {cid!r}: it has already run and stopped")
        raise InvalidState(f"cannot start container {cid!r}: it is {status}, not created")
    if status == STOPPED:
        raise NotRunning()
    raise InvalidState(f"cannot {verb} container {cid!r}: it is {status}")
