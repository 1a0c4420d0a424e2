"""MovieLens as GroupLens distributes it: 100K, 1M and the `latest` CSV releases.

    read_movielens(folder, *, variant=None) -> CanonicalTables

`variant` is "100k" | "1m" | "latest"; by default it is recognised from the files present
(`u.data`, `ratings.dat`, `ratings.csv`). Files:
- 100K: `u.data` (tab: user item rating unix-seconds), `u.item` (pipe, latin-1: id|title|release
  date|video date|IMDb URL|19 genre flags), `u.user` (pipe: id|age|gender|occupation|zip),
  optional `u.genre` (genre names; the standard 19 are used when absent).
- 1M: `ratings.dat`, `movies.dat` (id::title::A|B), `users.dat` (id::gender::age::occupation::zip);
  `::`-separated, latin-1.
- latest: `ratings.csv` (userId,movieId,rating,timestamp), `movies.csv` (quoted titles, genres A|B).

Canonical fields: items `title` (text, as published incl. the year), `release_year`
(categorical, like RecBole's `release_year:token`), `genres` (multi_categorical);
users `age`, `gender`, `occupation`, `zip_code` (categorical: 1M ages and occupations are codes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data_modules.errors import DataError, Quarantine
from data_modules.readers._common import (
    numeric_column,
    origin,
    read_delimited,
    require_columns,
    seconds_column,
    split_tokens,
)
from data_modules.tables import CanonicalTables, FieldKind

GENRES_100K = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
MARKERS = {"100k": "u.data", "1m": "ratings.dat", "latest": "ratings.csv"}
ITEM_FIELDS = {
    "title": FieldKind.text,
    "release_year": FieldKind.categorical,
    "genres": FieldKind.multi_categorical,
}
USER_FIELDS = {
    "age": FieldKind.categorical,
    "gender": FieldKind.categorical,
    "occupation": FieldKind.categorical,
    "zip_code": FieldKind.categorical,
}
INTER_COLUMNS = ["user", "item", "rating", "timestamp"]


def read_movielens(folder: str | Path, *, variant: str | None = None) -> CanonicalTables:
    """Read one MovieLens release from `folder` (see the module docstring for the files)."""
    folder = Path(folder).expanduser()
    variant = variant or _detect(folder)
    if variant not in MARKERS:
        raise DataError(f"variant {variant!r}: expected one of {sorted(MARKERS)}", path=folder)
    q = Quarantine()
    ratings_path = folder / MARKERS[variant]
    if not ratings_path.is_file():
        raise DataError(f"MovieLens {variant} ratings file missing", path=ratings_path)
    if variant == "100k":
        inter = read_delimited(ratings_path, "\t", q, header=False, names=INTER_COLUMNS)
    elif variant == "1m":
        inter = read_delimited(ratings_path, "::", q, header=False, names=INTER_COLUMNS, encoding="latin-1")
    else:
        inter = read_delimited(ratings_path, ",", q, quoting=True)
        inter = require_columns(
            inter.rename(columns={"userId": "user", "movieId": "item"}), INTER_COLUMNS, ratings_path
        )
    first = 2 if variant == "latest" else 1
    inter = numeric_column(inter, "rating", "non_numeric_rating", q, ratings_path, first_line=first)
    inter = seconds_column(inter, "timestamp", q, ratings_path, first_line=first)
    where = origin(inter, ratings_path, first)
    inter = inter.reset_index(drop=True)
    out = CanonicalTables(interactions=inter, quarantine=q, name=f"ml-{variant}", origin=where)
    out.rows_read[ratings_path.name] = len(inter) + q.total

    items, users = {
        "100k": (_items_100k, _users_100k),
        "1m": (_items_1m, _users_1m),
        "latest": (_items_latest, None),
    }[variant]
    out.items = items(folder, q)
    out.item_fields = dict(ITEM_FIELDS) if out.items is not None else {}
    out.users = users(folder, q) if users is not None else None
    out.user_fields = dict(USER_FIELDS) if out.users is not None else {}
    for key, t in (("items", out.items), ("users", out.users)):
        if t is not None:
            out.rows_read[str(t.attrs.get("file", "?"))] = len(t)
            out.files[key] = str(folder / str(t.attrs.get("file", "?")))
    return out


def _detect(folder: Path) -> str:
    found = [v for v, marker in MARKERS.items() if (folder / marker).is_file()]
    if len(found) != 1:
        raise DataError(
            f"cannot tell the MovieLens release: expected exactly one of {sorted(MARKERS.values())}",
            path=folder,
        )
    return found[0]


def _year_from_title(title: pd.Series) -> pd.Series:
    return title.str.extract(r"\((\d{4})\)\s*$", expand=False)


def _items_100k(folder: Path, q: Quarantine) -> pd.DataFrame | None:
    path = folder / "u.item"
    if not path.is_file():
        return None
    genre_path = folder / "u.genre"
    genres = GENRES_100K
    if genre_path.is_file():
        g = read_delimited(
            genre_path, "|", q, header=False, names=["name", "index"], encoding="latin-1"
        ).dropna()
        index = pd.to_numeric(g["index"], errors="coerce")
        if index.isna().any() or (index % 1 != 0).any():
            bad = int(np.flatnonzero((index.isna() | (index % 1 != 0)).to_numpy())[0])
            # the genre list names u.item's columns: a damaged entry would shift every item's genres
            raise DataError(f"genre index {g['index'].iloc[bad]!r} is not an integer (expected lines `name|index`)",
                            path=genre_path, row=int(g.index[bad]) + 1, field="index")
        genres = g.assign(index=index.astype(int)).sort_values("index")["name"].tolist()
    names = ["item", "title", "release_date", "video_release_date", "url", *genres]
    df = read_delimited(path, "|", q, header=False, names=names, encoding="latin-1")
    flags = df[genres].fillna("0").to_numpy() == "1"
    labels = np.array(genres, dtype=object)
    table = pd.DataFrame(
        {
            "item": df["item"],
            "title": df["title"].fillna(""),
            "release_year": df["release_date"].str.extract(r"(\d{4})\s*$", expand=False),
            "genres": pd.Series([labels[row].tolist() for row in flags], index=df.index, dtype=object),
        }
    )
    table.attrs["file"] = path.name
    return table


def _items_1m(folder: Path, q: Quarantine) -> pd.DataFrame | None:
    path = folder / "movies.dat"
    if not path.is_file():
        return None
    df = read_delimited(path, "::", q, header=False, names=["item", "title", "genres"], encoding="latin-1")
    return _items_from_title_genres(df, path)


def _items_latest(folder: Path, q: Quarantine) -> pd.DataFrame | None:
    path = folder / "movies.csv"
    if not path.is_file():
        return None
    df = read_delimited(path, ",", q, quoting=True).rename(
        columns={"movieId": "item"}
    )
    require_columns(df, ["item", "title", "genres"], path)
    return _items_from_title_genres(df, path)


def _items_from_title_genres(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    title = df["title"].fillna("").str.strip()
    genres = df["genres"].where(df["genres"] != "(no genres listed)")
    table = pd.DataFrame(
        {
            "item": df["item"],
            "title": title,
            "release_year": _year_from_title(title),
            "genres": split_tokens(genres, "|"),
        }
    )
    table.attrs["file"] = path.name
    return table


def _users_100k(folder: Path, q: Quarantine) -> pd.DataFrame | None:
    path = folder / "u.user"
    if not path.is_file():
        return None
    table = read_delimited(
        path, "|", q, header=False, names=["user", "age", "gender", "occupation", "zip_code"], encoding="latin-1"
    )
    table.attrs["file"] = path.name
    return table


def _users_1m(folder: Path, q: Quarantine) -> pd.DataFrame | None:
    path = folder / "users.dat"
    if not path.is_file():
        return None
    table = read_delimited(
        path,
        "::",
        q,
        header=False,
        names=["user", "gender", "age", "occupation", "zip_code"],
        encoding="latin-1",
    )
    table = table[["user", "age", "gender", "occupation", "zip_code"]]
    table.attrs["file"] = path.name
    return table
