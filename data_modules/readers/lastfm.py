"""HetRec 2011 Last.fm 2K, optionally with the KGCN knowledge graph over its artists.

    read_lastfm(folder, *, kg_dir=None, top_tags=10) -> CanonicalTables

Files in `folder` (tab-separated, header line; each may also be gzipped, `x.dat.gz`):
`user_artists.dat` (userID artistID weight), `artists.dat` (id name url pictureURL),
`tags.dat` (tagID tagValue; LATIN-1, not UTF-8), `user_taggedartists.dat`
(userID artistID tagID day month year), `user_friends.dat` (userID friendID).
`kg_dir` (or `folder` itself, when it holds them) has the KGCN files `item_index2entity_id.txt`
(artistID, entity) and `kg.txt` (head, relation, tail), headerless with CRLF line endings.

Output:
- interactions: user, item (artist), `event` = "listen" and a float column `weight` (the play
  count). There is no `rating`: a play count is not a rating, and turning it into one (log1p,
  bins) is a modelling choice for later steps, so the raw count is kept. Unknown columns are
  ignored downstream.
- items: every artist of artists.dat with `name` (text) and `tags` (multi_categorical: the
  `top_tags` tag strings applied most often to the artist, ties by tag id). Tag rows whose artist is
  missing from artists.dat (a known quirk: 390 ids) are counted as `tag_for_unknown_artist`.
- graphs: `social` from user_friends (already symmetric), `kg` linked as in RecBole (`_common.link_kg`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from data_modules.errors import DataError, Quarantine
from data_modules.readers._common import (
    SAMPLE,
    first_existing,
    link_kg,
    numeric_column,
    origin,
    read_delimited,
    require_columns,
)
from data_modules.tables import CanonicalTables, FieldKind


def _find(folder: Path, name: str, required: bool = True) -> Path | None:
    path = first_existing(folder, (name, f"{name}.gz"))
    if path is None and required:
        raise DataError(f"Last.fm file {name} (or {name}.gz) missing", path=folder / name)
    return path


def read_lastfm(
    folder: str | Path, *, kg_dir: str | Path | None = None, top_tags: int = 10
) -> CanonicalTables:
    """Read the HetRec Last.fm 2K folder (and the KGCN KG from `kg_dir`, when given)."""
    folder = Path(folder).expanduser()
    q = Quarantine()
    listens_path = _find(folder, "user_artists.dat")
    listens = require_columns(
        read_delimited(listens_path, "\t", q), ["userID", "artistID", "weight"], listens_path
    )
    listens = numeric_column(listens, "weight", "non_numeric_weight", q, listens_path)
    inter = pd.DataFrame(
        {
            "user": listens["userID"],
            "item": listens["artistID"],
            "event": "listen",
            "weight": listens["weight"],
        }
    ).reset_index(drop=True)
    out = CanonicalTables(interactions=inter, quarantine=q, name="lastfm-2k", origin=origin(listens, listens_path, 2))
    out.rows_read[listens_path.name] = len(listens) + q.total

    artists_path = _find(folder, "artists.dat", required=False)
    if artists_path is not None:
        artists = require_columns(read_delimited(artists_path, "\t", q), ["id", "name"], artists_path)
        out.rows_read[artists_path.name] = len(artists)
        items = pd.DataFrame({"item": artists["id"], "name": artists["name"].fillna("")})
        out.item_fields["name"] = FieldKind.text
        tags = _tags(folder, set(items["item"]), top_tags, q, out.rows_read)
        if tags is not None:
            items["tags"] = items["item"].map(tags).map(lambda v: v if isinstance(v, list) else [])
            out.item_fields["tags"] = FieldKind.multi_categorical
        out.items = items
        out.files["items"] = str(artists_path)

    friends_path = _find(folder, "user_friends.dat", required=False)
    if friends_path is not None:
        friends = require_columns(read_delimited(friends_path, "\t", q), ["userID", "friendID"], friends_path)
        out.graphs["social"] = pd.DataFrame({"src": friends["userID"], "dst": friends["friendID"]})
        out.rows_read[friends_path.name] = len(friends)
        out.files["social"] = str(friends_path)

    kg_folder = Path(kg_dir).expanduser() if kg_dir is not None else folder
    link_path, kg_path = kg_folder / "item_index2entity_id.txt", kg_folder / "kg.txt"
    if kg_dir is not None and not (link_path.is_file() and kg_path.is_file()):
        raise DataError("kg_dir needs item_index2entity_id.txt and kg.txt", path=kg_folder)
    if link_path.is_file() and kg_path.is_file():
        links = read_delimited(link_path, "\t", q, header=False, names=["item", "entity"])
        triples = read_delimited(kg_path, "\t", q, header=False, names=["head", "relation", "tail"])
        out.graphs["kg"] = link_kg(triples, links, q, kg_path)
        out.rows_read[link_path.name], out.rows_read[kg_path.name] = len(links), len(triples)
        out.files["kg"] = str(kg_path)
    return out


def _tags(
    folder: Path, artists: set[str], top: int, q: Quarantine, rows_read: dict[str, int]
) -> pd.Series | None:
    """artist id -> list of its `top` most frequent tag strings, or None when the tag files are absent."""
    names_path, applied_path = (
        _find(folder, "tags.dat", False),
        _find(folder, "user_taggedartists.dat", False),
    )
    if names_path is None or applied_path is None:
        return None
    names = read_delimited(names_path, "\t", q, encoding="latin-1")  # the release's tags.dat is Latin-1
    applied = require_columns(read_delimited(applied_path, "\t", q), ["artistID", "tagID"], applied_path)
    rows_read[names_path.name], rows_read[applied_path.name] = len(names), len(applied)
    unknown = ~applied["artistID"].isin(artists)
    if unknown.any():
        q.reject_many(
            "tag_for_unknown_artist",
            int(unknown.sum()),
            path=applied_path,
            reason="artistID not in artists.dat",
            records=applied[unknown].head(SAMPLE).to_dict("records"),
            rows=[int(i) + 2 for i in applied.index[unknown][:SAMPLE]],
        )
    counts = applied[~unknown].groupby(["artistID", "tagID"]).size().rename("n").reset_index()
    counts["tag_order"] = pd.to_numeric(counts["tagID"], errors="coerce")
    counts = counts.sort_values(["artistID", "n", "tag_order"], ascending=[True, False, True], kind="stable")
    counts = counts.groupby("artistID", sort=False).head(top)
    dup = names[names.columns[0]].duplicated()
    if dup.any():  # one tag id listed twice: its first name is used
        q.reject_many("duplicate_tag_id", int(dup.sum()), path=names_path, reason="tagID listed again; first name kept",
                      records=names[dup].head(SAMPLE).to_dict("records"),
                      rows=[int(i) + 2 for i in names.index[dup][:SAMPLE]])
    tag_names = names[~dup].set_index(names.columns[0])[names.columns[1]]
    counts["tag"] = counts["tagID"].map(tag_names).fillna(counts["tagID"])
    return counts.groupby("artistID", sort=False)["tag"].agg(list)
