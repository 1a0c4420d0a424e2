"""Property: whatever damage a delimited file has, the generic reader ends in a clear DataError naming the file or
in tables whose every quarantine sample names its file, and no row is lost without a count
(rows read = rows kept + rows quarantined). Hypothesis builds a valid CSV / TSV, then damages it the ways real
exports are damaged: fields dropped or added, stray quotes, bytes that are not UTF-8, NUL and CR bytes, lines
duplicated or cut, values replaced by junk, the file truncated, gzipped, gzipped and truncated."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from data_modules.errors import DataError  # noqa: E402
from data_modules.readers.generic import read_generic  # noqa: E402
from tests.helpers.damage import damage  # noqa: E402

pytestmark = pytest.mark.unit


@st.composite
def rows(draw) -> list[list[str]]:
    n = draw(st.integers(1, 25))
    return [[f"u{draw(st.integers(0, 5))}", f"i{draw(st.integers(0, 7))}", str(draw(st.integers(1, 5))),
             str(880_000_000 + draw(st.integers(0, 10**6)))] for _ in range(n)]


@st.composite
def damaged_files(draw) -> tuple[str, str, bytes]:
    fmt = draw(st.sampled_from(["csv", "tsv"]))
    sep = "," if fmt == "csv" else "\t"
    text = "\n".join(sep.join(r) for r in [["user", "item", "rating", "timestamp"], *draw(rows())]) + "\n"
    name = f"ratings.{fmt}" + draw(st.sampled_from(["", ".gz"]))
    return name, fmt, draw(damage(text.encode()))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged_files())
def test_damaged_delimited_input_never_traces_back_and_loses_nothing_uncounted(case):
    name, fmt, data = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            t = read_generic({"interactions": {"path": name, "format": fmt}}, base_dir=tmp)
        except DataError as e:
            assert str(path) in str(e), e  # a clear error names the file
            return
        q = t.quarantine
        assert all(s["file"] == str(path) for s in q.samples), q.samples
        assert all(isinstance(s["row"], int) and s["row"] >= 2 for s in q.samples), q.samples  # a line of the file
        assert t.rows_read[name] == len(t.interactions) + q.total, (t.rows_read, len(t.interactions), q.counts)
        assert len(t.origin) == len(t.interactions)
        inter = t.interactions  # (a damaged header may have lost a column: then every row is malformed)
        assert all(isinstance(u, str) and u for u in [*inter["user"], *inter["item"]])
        assert "timestamp" not in inter.columns or str(inter["timestamp"].dtype) == "int64"


TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\x00"), max_size=30)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), TEXT), min_size=1, max_size=20))
def test_csv_quoting_round_trips_exactly(reviews):
    """What Python's csv writer quotes (separators, quotes, line breaks inside a field), the reader reads back."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["user", "item", "review"])
    w.writerows([f"u{u}", f"i{k}", text] for k, (u, text) in enumerate(reviews))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "r.csv").write_text(buf.getvalue(), encoding="utf-8")
        t = read_generic({"interactions": {"path": "r.csv"}}, base_dir=tmp)
    assert not t.quarantine.counts, t.quarantine.samples
    assert t.interactions["review"].tolist() == [text for _, text in reviews]
    assert t.interactions["item"].tolist() == [f"i{k}" for k in range(len(reviews))]
