"""Ciao ratings + trust: reported exactly as stored (zero ratings and duplicates are the clean step's job)."""

from pathlib import Path

import pytest

from data_modules.errors import DataError
from data_modules.readers.assets import shared_data_dir
from data_modules.readers.ciao import read_ciao
from data_modules.tables import FieldKind

pytestmark = pytest.mark.unit

CIAO = Path(__file__).parents[2] / "fixtures" / "readers" / "ciao"


def test_tiny_ciao():
    t = read_ciao(CIAO)
    t.validate()
    inter = t.interactions
    assert inter["rating"].tolist() == [5.0, 5.0, 0.0, 5.0]  # the zero and the duplicate row are kept
    assert str(inter["timestamp"].dtype) == "int64" and inter["helpfulness"].tolist() == [4.0, 4.0, 3.0, 4.0]
    assert t.item_fields == {"category": FieldKind.categorical}
    assert t.items.set_index("item")["category"].to_dict() == {"92579": "24", "77965": "4"}
    assert t.quarantine.counts == {"item_category_conflict": 1}
    assert t.graphs["social"].to_numpy().tolist() == [["6119", "6094"]]


def test_missing_column_named(tmp_path):
    (tmp_path / "ratings.tsv").write_text("userid\tproductid\trating\n1\t2\t3\n")
    with pytest.raises(DataError, match=r"ratings\.tsv.*categoryid.*columns present"):
        read_ciao(tmp_path)


def test_missing_file_named(tmp_path):
    with pytest.raises(DataError, match=r"ratings\.tsv\.gz.*not found"):
        read_ciao(tmp_path)


def test_real_ciao_counts():
    root = shared_data_dir()
    if root is None or not (root / "ciao-tang").is_dir():
        pytest.skip("shared data ciao-tang not found (set FUSIONREC_SHARED_DATA to the shared/data folder)")
    t = read_ciao(root / "ciao-tang")
    t.validate()
    s = t.summary()
    assert (s["interactions"], s["users"], s["items"], s["graph_social"]) == (284086, 7375, 105114, 57544)
    inter = t.interactions
    assert (inter["rating"] == 0).sum() == 34 and inter.duplicated().sum() == 190
    assert t.items["category"].nunique() == 28
