"""Hypothesis strategies that damage a file's bytes the ways real exports are damaged, for the reader property
tests: fields dropped or added, junk inserted (stray quotes, separators, NUL / CR, a BOM, non-UTF-8 bytes, text
where a number belongs), lines duplicated, cut or blanked, the file truncated, gzipped, gzipped and truncated."""

from __future__ import annotations

import gzip

from hypothesis import strategies as st

JUNK = st.sampled_from(['"', '""', ",", "\t", "\xff", "\x00", "\r", "\n", "é", "n/a", "-1", "1e400", " ", "\ufeff",
                        "{", "}", "::", "|", "-99999999999"])


@st.composite
def damage(draw, text: bytes, max_ops: int = 4) -> bytes:
    """`text` with 0..max_ops line-level edits, then maybe truncated and maybe gzip-compressed (and maybe cut)."""
    lines = text.split(b"\n")
    for _ in range(draw(st.integers(0, max_ops))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop_field", "add_field", "junk", "dup", "cut", "bytes", "blank"]))
        if op == "drop_field" and b"," in lines[i] + b"\t":
            sep = b"," if b"," in lines[i] else b"\t"
            lines[i] = sep.join(lines[i].split(sep)[:-1])
        elif op == "add_field":
            lines[i] += draw(st.sampled_from([b",", b"\t", b"::"])) + b"x"
        elif op == "junk":
            pos = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:pos] + draw(JUNK).encode("utf-8", "surrogatepass") + lines[i][pos:]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif op == "bytes":
            pos = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:pos] + draw(st.binary(min_size=1, max_size=3)) + lines[i][pos:]
        else:
            lines.insert(i, b"")
    data = b"\n".join(lines)
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        data = gzip.compress(data)
        if draw(st.booleans()):
            data = data[: draw(st.integers(0, len(data)))]
    return data
