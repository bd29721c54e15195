"""JSON on the container start path without the `json` package.

`import json` pulls in `re` (and through it `enum`): about half the import
time of a container start.  The C accelerator `_json` that `json` itself
uses needs no regular expressions when driven directly: its scanner parses
numbers natively when parse_int/parse_float are the builtins, and its
encoder does the rest.  Output is byte-for-byte what `json.dumps` produces
with the same separators; `indent` is done here (the C encoder has none).
"""

import _json

_c_encode_str = _json.encode_basestring_ascii


class _Ctx:
    # The attributes _json.make_scanner reads from its context.
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo = None

    @staticmethod
    def parse_constant(name):
        return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


_scan = _json.make_scanner(_Ctx())


class JSONDecodeError(ValueError):
    pass


class TooDeep(JSONDecodeError, RecursionError):
    """A document nested deeper than the interpreter's stack: a ValueError like any bad
    document, and a RecursionError, as json.loads raises there."""


_WS = " \t\n\r"


def loads(data):
    if isinstance(data, (bytes, bytearray)):
        try:
            data = data.decode("utf-8-sig" if data[:3] == b"\xef\xbb\xbf" else "utf-8")
        except UnicodeDecodeError as e:
            raise JSONDecodeError(f"not UTF-8: {e}") from None
    i, n = 0, len(data)
    while i < n and data[i] in _WS:
        i += 1
    try:
        obj, end = _scan(data, i)
    except StopIteration as e:
        raise JSONDecodeError(_where("expecting a value", data, e.value)) from None
    except RecursionError:
        # A document nested deeper than the interpreter's stack: one error
        # line, not a traceback (the json module would only fail again).
        raise TooDeep("nested too deeply") from None
    except Exception:  # noqa: BLE001
        # The C scanner builds most syntax errors by importing json.decoder
        # (and can fail doing it with -S); on this error path only, let the
        # json module parse again and word the message.
        import json

        try:
            json.loads(data)
        except ValueError as e:
            raise JSONDecodeError(str(e)) from None
        raise
    while end < n and data[end] in _WS:
        end += 1
    if end != n:
        raise JSONDecodeError(_where("extra data", data, end))
    return obj


def _where(what, doc, pos):
    line = doc.count("\n", 0, pos) + 1
    col = pos - doc.rfind("\n", 0, pos)
    return f"{what}: line {line} column {col} (char {pos})"


def _float(o):
    if o != o:
        return "NaN"
    if o == float("inf"):
        return "Infinity"
    if o == -float("inf"):
        return "-Infinity"
    return float.__repr__(o)


def _default(o):
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def _encoder(kv, item, sort_keys):
    return _json.make_encoder(None, _default, _c_encode_str, None, kv, item, sort_keys, False, True)


_compact, _spaced = _encoder(":", ",", False), _encoder(": ", ", ", False)
_sorted = {}


def dumps(obj, indent=None, separators=None, sort_keys=False):
    """json.dumps(obj, separators=(",", ":")) when separators is (",", ":"),
    json.dumps(obj) by default, json.dumps(obj, indent=N) with indent; sort_keys as json's."""
    if indent is not None:
        out = []
        _pretty(obj, out, " " * indent if isinstance(indent, int) else indent, 0, sort_keys)
        return "".join(out)
    compact = separators == (",", ":")
    if sort_keys:
        enc = _sorted.get(compact)
        if enc is None:
            enc = _sorted[compact] = _encoder(":", ",", True) if compact else _encoder(": ", ", ", True)
    else:
        enc = _compact if compact else _spaced
    return "".join(enc(obj, 0))


def load(f):
    """json.load: the whole of file object `f`."""
    return loads(f.read())


def _pretty(o, out, step, depth, sort_keys=False):
    if isinstance(o, dict) and o:
        pad = "\n" + step * (depth + 1)
        out.append("{")
        first = True
        for k, v in (sorted(o.items()) if sort_keys else o.items()):
            out.append(pad if first else "," + pad)
            first = False
            out.append(_c_encode_str(str(k)))
            out.append(": ")
            _pretty(v, out, step, depth + 1, sort_keys)
        out.append("\n" + step * depth + "}")
    elif isinstance(o, (list, tuple)) and o:
        pad = "\n" + step * (depth + 1)
        out.append("[")
        first = True
        for v in o:
            out.append(pad if first else "," + pad)
            first = False
            _pretty(v, out, step, depth + 1, sort_keys)
        out.append("\n" + step * depth + "]")
    else:
        out.append("".join(_compact(o, 0)))  # a scalar, {} or []


# How deep a document may nest: OCI configs and image documents nest 5
# levels; later walks of a deeper one (copies, encodings, state) recurse
# and would end in a RecursionError traceback instead of one error line.
MAX_DEPTH = 64


def too_deep(doc, limit=MAX_DEPTH):
    """True when `doc` (parsed JSON) nests more than `limit` levels.
    Iterative: the check itself cannot overflow."""
    stack = [(doc, 1)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return True
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values() if isinstance(x, (dict, list)))
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v if isinstance(x, (dict, list)))
    return False
