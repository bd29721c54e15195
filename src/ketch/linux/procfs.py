"""Small readers of /proc that the runtime, the engine and the container side share."""


def proc_start_time(pid):
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), and the state letter.

    Returns (None, None) when the pid does not exist.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None, None
    # comm may contain spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(b")") + 2:].split()
    return int(rest[19]), rest[0].decode()
