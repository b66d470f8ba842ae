"""Go's text formats that reach the wire: strconv.Quote, time.Time.String(), time.Duration.String().

Upstream's server is Go; clients and scripts compare its texts byte for byte, so ours are made the same
way (DESIGN Part 11).
"""

from __future__ import annotations

import datetime as dt
import unicodedata

_ESCAPES = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v", 0x5C: "\\\\"}


def _printable(char: str) -> bool:
    """strconv.IsPrint: letters, marks, numbers, punctuation, symbols and the ASCII space."""
    return char == " " or unicodedata.category(char)[0] in "LMNPS"


def go_quote(value: str | bytes) -> str:
    """strconv.Quote: a double-quoted Go string literal (invalid UTF-8 bytes as \\xNN)."""
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    out = ['"']
    i = 0
    while i < len(data):
        byte = data[i]
        if byte < 0x80:
            char = chr(byte)
            if char == '"':
                out.append('\\"')
            elif byte in _ESCAPES:
                out.append(_ESCAPES[byte])
            elif byte < 0x20 or byte == 0x7F:
                out.append(f"\\x{byte:02x}")
            else:
                out.append(char)
            i += 1
            continue
        width = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4 if byte >> 3 == 0b11110 else 0
        try:
            char = data[i : i + width].decode("utf-8") if width else ""
        except UnicodeDecodeError:
            char = ""
        if len(char) != 1:
            out.append(f"\\x{byte:02x}")
            i += 1
            continue
        code = ord(char)
        if _printable(char):
            out.append(char)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
        i += width
    out.append('"')
    return "".join(out)


def go_duration(seconds: float) -> str:
    """time.Duration.String() of a duration truncated to milliseconds (as upstream reports elapsedTime)."""
    ms = int(seconds * 1000)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, frac = divmod(rest, 1000)
    sec_text = f"{secs}" + (f".{frac:03d}".rstrip("0") if frac else "") + "s"
    if hours:
        return f"{hours}h{minutes}m{sec_text}"
    if minutes:
        return f"{minutes}m{sec_text}"
    return sec_text


def go_time(moment: dt.datetime) -> str:
    """time.Time.String(): ``2006-01-02 15:04:05.999999 -0700 MST`` (trailing zeros cut; naive = local)."""
    local = moment if moment.tzinfo is not None else moment.astimezone()
    frac = f".{local.microsecond:06d}".rstrip("0") if local.microsecond else ""
    offset = local.strftime("%z")
    zone = local.tzname() or offset
    return f"{local:%Y-%m-%d %H:%M:%S}{frac} {offset} {zone}"


def go_now() -> str:
    return go_time(dt.datetime.now().astimezone())
