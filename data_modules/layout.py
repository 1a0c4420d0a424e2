"""The on-disk layout of a prepared dataset folder: one place that names every file.

    <dir>/manifest.json                  schema, vocabularies, statistics, split, shard list (rows, bytes, sha256),
                                         side arrays (shape, dtype, bytes, sha256); checked on open (integrity.py)
    <dir>/quarantine.jsonl               a sample of rejected rows (rule, file, row, reason, record)
    <dir>/train/part-00000.parquet ...   columns: user int32, item int32, rating float32 (NaN = none),
                                         timestamp int64, seq_pos int32 (index of this interaction in the
                                         user's time-ordered training sequence, see history_*)
    <dir>/valid/part-*.parquet           columns: user, item, rating, timestamp
    <dir>/test/part-*.parquet            idem
    <dir>/negatives/<protocol>_<split>.parquet   optional (prepare `negatives.protocols`, e.g. uni100): per held-out
                                         interaction of valid / test, user, item, negatives list<int32>[N]
                                         (data_modules/prepare/negatives.py); listed in manifest `negatives`
    <dir>/side/*.npy                     memory-mappable side arrays (np.load(mmap_mode="r")):
        history_offsets (n_users + 1,) int64 / history_items (n_train,) int32
            each user's training items in time order (CSR); user u's sequence is
            history_items[history_offsets[u]:history_offsets[u + 1]]
        item_popularity (n_items,) int64   training interactions per item
        {user,item}_cat (n, F) int32       categorical codes per field, 0 = missing/unknown
        {user,item}_num (n, F) float32     numeric fields, standardised, missing = 0
        {user,item}_multi_<field>_offsets / _values   multi-categorical CSR, codes start at 1
        {user,item}_text_offsets / _ids    token ids of the rendered text template (CSR)
        {user,item}_vectors (n, D) float32 precomputed vectors (vectors: section), row = dense id, zeros = none
        {user,item}_vector_mask (n,) bool  True = the entity has a vector (counts: manifest schema.vectors)
        graph_social (E, 2) int32          user -> user
        graph_kg (E, 3) int32              item, relation code, entity code
        graph_item_item (E, 3) int32       item, item, relation code
    <dir>/id_maps/{users,items}.parquet  columns: index int32, id string
Ids are dense: users 0..n_users-1, items 0..n_items-1.
"""

from __future__ import annotations

MANIFEST = "manifest.json"
QUARANTINE = "quarantine.jsonl"
SPLITS = ("train", "valid", "test")
SIDE = "side"
ID_MAPS = "id_maps"
LAYOUT_VERSION = 1
