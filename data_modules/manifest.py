"""Read a prepared dataset's manifest, verify its shards, and print it in human form (`fusionrec data inspect`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_modules import layout
from data_modules.errors import DataError
from data_modules.integrity import check_shard, check_side
from data_modules.prepare import negatives


def load_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / layout.MANIFEST
    if not path.exists():
        raise DataError("no manifest.json: not a prepared dataset (run `fusionrec data prepare <config>` first)", path=Path(root))
    m = json.loads(path.read_text(encoding="utf-8"))
    if m.get("layout_version") != layout.LAYOUT_VERSION:
        raise DataError(f"layout_version {m.get('layout_version')} but this fusionrec reads {layout.LAYOUT_VERSION}: re-prepare", path=path)
    check_paths(root, m, path)
    return m


def check_paths(root: str | Path, manifest: dict[str, Any], path: str | Path) -> None:
    """Refuse a manifest that names a file outside its dataset folder: a shard path that is absolute, climbs with
    `..` or resolves (through a link) elsewhere, or a side array name that is not a plain file name. A dataset
    copied from an untrusted place must not make the loader read (or the checksum step hash) arbitrary files."""
    inside = Path(root).resolve()
    listed = [(f"{split} shard", s) for split, shards in (manifest.get("shards") or {}).items() for s in shards]
    for what, s in listed + negatives.files(manifest):
        rel = str(s.get("path", ""))
        target = (inside / rel).resolve()
        if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts or not target.is_relative_to(inside):
            raise DataError(f"{what} path {rel!r} is outside the dataset folder {inside}: refused "
                            "(a manifest names files relative to its own folder)", path=path)
    for name in manifest.get("side") or {}:
        if not name or Path(name).name != name or name in (".", "..") or "\\" in name:
            raise DataError(f"side array name {name!r} is not a plain file name inside {inside / layout.SIDE}: "
                            "refused", path=path)


def verify_checksums(root: str | Path, manifest: dict[str, Any]) -> None:
    """Raise DataError naming the first shard or side array whose size or sha256 does not match the manifest
    (the hashes are remembered for this process: data_modules/integrity.py)."""
    for split, shards in manifest["shards"].items():
        for s in shards:
            check_shard(root, split, s)
    for name, info in manifest.get("side", {}).items():
        check_side(root, name, info)
    for what, entry in negatives.files(manifest):
        check_shard(root, what, entry)


def format_manifest(m: dict[str, Any], root: str | Path) -> str:
    """A short human summary: sources, counts, split, rejected rows, schema, shards."""
    c, s = m["counts"], m["stats"]
    lines = [
        f"dataset      {m['name']}  ({root})",
        f"fingerprint  {m['fingerprint'][:16]}…  prepared {m['created']} in {m['seconds']}s",
        f"read         {s['raw']}",
        f"kept         {s['after_filter']} interactions after cleaning ({s['after_clean']}) and filtering; "
        f"{c['users']} users, {c['items']} items, density {s['density']:.4%}",
        f"split        {m['split']['protocol']}"
        + "".join(f" {k}={m['split'][k]}" for k in ("ratios", "order", "seed") if k in m["split"]) + ": "
        f"train {c['train']}, valid {c['valid']}, test {c['test']} (eval users: {m['split']['eval_users']})",
        "rejected     " + (", ".join(f"{k}={v}" for k, v in m["quarantine"].items()) or "none")
        + (f"  (sample: {Path(root) / layout.QUARANTINE})" if m["quarantine"] else ""),
        "unused       " + (", ".join(f"{k}={v['rows']}" for k, v in (m.get("unused") or {}).items()) or "none")
        + ("  (harmless rows nothing kept refers to; not rejected)" if m.get("unused") else ""),
    ]
    if lin := m.get("lineage"):  # an appended dataset (prepare/append.py)
        par, add = lin["parent"], lin["added"]
        lines.append(f"lineage      extends {par['dir']} (fingerprint {par['fingerprint'][:16]}…, {par['counts']['users']} "
                     f"users, {par['counts']['items']} items; {len(lin['ancestors'])} ancestor(s)) with {add['paths']}: "
                     f"+{add['users']} users, +{add['items']} items; the parent's training rows now in valid / test: "
                     f"{lin.get('parent_train_in_eval')}")
    if (m["stats"].get("timestamp_unit") or {}).get("assumed"):
        t = m["stats"]["timestamp_unit"]
        lines.append(f"timestamps   read as {t['assumed']} (median {t['median']:.4g}), not seconds as the format says")
    for ent in ("users", "items"):
        sch = m["schema"].get(ent) or {}
        parts = [f"{f['name']}(cat:{f['cardinality']})" for f in sch.get("categorical", [])]
        parts += [f"{f['name']}(multi:{f['cardinality']})" for f in sch.get("multi_categorical", [])]
        parts += [f"{f['name']}(num)" for f in sch.get("numeric", [])]
        parts += [f"{f}(text)" for f in sch.get("text", [])]
        lines.append(f"{ent + ' fields':13}{', '.join(parts) or 'none'}")
    graphs = m["schema"].get("graphs", {})
    lines.append("graphs       " + (", ".join(f"{g}: {v['edges']} edges" for g, v in graphs.items()) or "none"))
    for ent, t in (m["schema"].get("text") or {}).items():
        lines.append(f"{ent} text    {t['tokenizer']} max_length={t['max_length']} mean tokens {t['mean_tokens']:.1f}; e.g. {t['example']!r}")
    for ent, v in (m["schema"].get("vectors") or {}).items():
        lines.append(f"{ent} vectors {v['dim']}-d, {v['matched']} matched, {v['missing']} without a vector, "
                     f"{v['not_in_catalog']} not in the catalog, {v['unknown']} unknown ids ({v['file']})")
    for split, shards in m["shards"].items():
        lines.append(f"shards       {split}: {len(shards)} file(s), {sum(x['rows'] for x in shards)} rows, "
                     f"{sum(x['bytes'] for x in shards) / 1e6:.2f} MB")
    for name, e in negatives.stored(m).items():
        lines.append(f"negatives    {name}: {e['num']} {e['distribution']} per held-out interaction (seed {e['seed']}); "
                     + ", ".join(f"{s} {e[s]['rows']} rows" for s in ("valid", "test") if s in e))
    return "\n".join(lines)
