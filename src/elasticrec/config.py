"""One typed configuration for every run: dataclasses, YAML presets, command-line overrides.

A run is described by :class:`ExperimentConfig` (data + model + train + eval sections).
Presets live in ``configs/<dataset>/<model>.yaml``; any field can be overridden from the
command line with ``--set section.field=value`` (values parsed as YAML scalars).
Unknown keys and wrong types are rejected with the valid choices listed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """Raised for unknown keys, wrong types or invalid values in a configuration."""


# ----------------------------------------------------------------------------- sections
@dataclass
class SyntheticConfig:
    """Seeded generator with planted short-term (Markov) and long-term (interest cluster) signal."""

    n_users: int = 2000
    n_items: int = 2000
    min_len: int = 50
    max_len: int = 200
    n_clusters: int = 50  # long-term interest clusters over the catalogue
    clusters_per_user: int = 3  # persistent interests each user draws from
    p_markov: float = 0.3  # probability the next item follows the previous item's Markov successor
    p_long: float = 0.6  # probability (otherwise) that it comes from the user's persistent clusters
    markov_fanout: int = 3  # successors per item in the Markov chain
    seed: int = 0


@dataclass
class DataConfig:
    name: str = "ml-1m"  # preset name (see elasticrec.data.registry) or "custom"
    format: str | None = None  # reader; inferred from the preset when None
    path: str | None = None  # file or directory; else $ELASTICREC_DATA, else the user cache dir
    cache_dir: str | None = None  # processed-array cache; default: $ELASTICREC_CACHE, else user cache dir
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str | None = "timestamp"
    rating_col: str | None = None
    sep: str | None = None
    min_rating: float | None = None  # keep interactions with rating >= this
    min_user_count: int = 0  # k-core: users with fewer interactions are dropped
    min_item_count: int = 0  # k-core: items with fewer interactions are dropped
    kcore_iterative: bool = False  # repeat filtering until stable (True k-core)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ElasticConfig:
    n_dispatchers: int = 16  # k interest experts per layer
    chunk_size: int = 64  # C
    use_local: bool = True  # joint softmax over dispatchers + causal local chunk
    chunk_align: str = "end"  # end: chunk grid ends at the last item; start: starts at the first
    # item of the history (needed for constant-cost streaming updates, see elasticrec.serving)
    # "count": add log((N + 1) / k) to the dispatcher logits of a chunk whose earlier chunks hold
    # N items, so the k dispatchers weigh as much as the history they summarise (short histories:
    # the k empty-history dispatchers weigh one item, not k); "items": log(N / k), so a position
    # with no earlier chunk attends to its own chunk only (needs use_local); "none": plain logits
    dispatcher_bias: str = "none"
    # [ours], after HSTU: a learned per-head bias by distance t - s on the local-chunk logits
    # (zero at init; needs use_local), and SiLU(x W_u) gating of the attention output before Wo
    local_position_bias: bool = False
    output_gate: bool = False
    # [ours]: each position also attends exactly to every item of the chunk before its own, so it
    # sees at least its C most recent items exactly (not 1 to C); needs use_local
    local_lookback: bool = False
    output_norm: bool = False  # [ours], after HSTU: layer-norm the attention output before gate / Wo
    # how each position's joint softmax over dispatchers + local keys runs: "explicit" (logits,
    # softmax and weighted sums as separate ops, fp32 logits) or "sdpa" (one fused
    # scaled_dot_product_attention call per layer, the biases as an additive mask; same model)
    distribute: str = "explicit"
    memory: bool = False  # interest memory retrieval (product-key memory) on/off
    memory_layers: list[int] = field(default_factory=lambda: [-1])  # which blocks get IMR
    # where a block reads its memory: "dispatchers" (ELASTIC.md: each packed dispatcher queries it,
    # P <- P + PKM(P)) or "tokens" (every position's hidden state queries it after the FFN,
    # x <- x + PKM(LN(x)), as in Lample et al.; works on histories shorter than one chunk) or
    # "queries" (ELASTIC.md's alternative: the memory chooses the dispatcher queries; chunk c's
    # items are packed with Q_P + PKM(Q_P + mean input of chunk c-1))
    memory_site: str = "dispatchers"
    memory_n_keys: int = 256  # sub-keys per codebook: n_keys^2 slots
    memory_heads: int = 4
    memory_topk: int = 32
    memory_key_dim: int = 64
    memory_query_norm: str = "layernorm"  # layernorm | batchnorm (BN couples rows in training)
    memory_value_lr: float | None = None  # separate learning rate for the value table


@dataclass
class HSTUConfig:
    num_buckets: int = 128  # relative-position buckets (log-spaced beyond num_buckets // 2)
    use_time_bias: bool = True  # relative-time buckets from timestamps (skipped when data has none)
    time_buckets: int = 128  # relative-time buckets: floor(ln(gap_seconds) / time_log_scale)
    time_log_scale: float = 0.301  # bucket width in ln(seconds) (HSTU's value); larger gaps clamp to the last
    attention_dim: int | None = None  # Q/K size per head; default d_model // n_heads
    linear_dim: int | None = None  # U/V size per head; default d_model // n_heads
    attn_dropout: float = 0.0  # dropout on the pointwise attention weights
    attn_norm: str = "max_len"  # divide SiLU(QK^T + rab) by max_len (HSTU) | causal (keys attended)


@dataclass
class SASRecConfig:
    # [ours] HSTU's output treatment in SASRec's attention, the same options as ELASTIC's (for a
    # like-for-like baseline): gate the attention output by SiLU(W_u x + b_u), layer-normalise it first
    output_gate: bool = False
    output_norm: bool = False
    # [ours] learned key/value pairs every position attends to beside its history (an attention
    # sink), as ELASTIC's k empty-history dispatchers are for a position with no earlier chunk
    null_kv: int = 0


@dataclass
class LinRecConfig:
    chunk_size: int = 64  # positions per chunk of the causal linear attention (memory vs speed)


@dataclass
class ModelConfig:
    name: str = "sasrec"
    max_len: int = 200
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 1
    ffn_dim: int | None = None  # default: d_model (SASRec) or 4*d_model
    dropout: float = 0.2
    emb_dropout: float | None = None  # default: dropout
    pos_encoding: str = "learned"  # learned (counted from the end) | learned-start | chunk | none | rotary
    norm_first: bool = True
    init_std: float = 0.02
    # how a hidden state scores an item: "dot" (SASRec) or "cosine" (both L2-normalised, as in
    # HSTU's public experiments; pair it with a low train.temperature such as 0.05)
    score: str = "dot"
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    elastic: ElasticConfig = field(default_factory=ElasticConfig)
    hstu: HSTUConfig = field(default_factory=HSTUConfig)
    linrec: LinRecConfig = field(default_factory=LinRecConfig)


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    schedule: str = "constant"  # constant | cosine
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    loss: str = "ce"  # ce | sampled | bce
    n_negatives: int = 256  # uniform negatives for the sampled softmax (see negatives_per)
    # batch: the n_negatives items are drawn once per batch and shared by every position |
    # position: n_negatives items drawn for each position (generative-recommenders' "local"
    # sampling, which its published HSTU / SASRec ML-1M numbers use with 128 negatives)
    negatives_per: str = "batch"
    in_batch_negatives: bool = True
    temperature: float = 1.0
    ce_impl: str = "chunked"  # chunked (row blocks, no full logits matrix) | plain (F.cross_entropy)
    ce_chunk_rows: int = 0  # rows per block for ce_impl=chunked; 0 = about 4M logits (CPU) / 64M (GPU)
    logq: bool = False  # logQ correction for in-batch (popularity-sampled) negatives
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | off
    patience: int = 20  # epochs without validation improvement before stopping
    eval_every: int = 1
    max_steps: int | None = None  # hard cap on optimizer steps (smoke runs)
    time_budget_s: float | None = None  # stop training after this many seconds
    # which windows of a long history an epoch trains on (elasticrec.train.batches): last (the
    # most recent max_len+1 items per user) | all (every training item is a target once per
    # epoch, more samples) | random (one window per user, end drawn anew every epoch)
    windows: str = "last"
    # how samples become batches (elasticrec.train.batches): padded (every row left-padded to
    # max_len) | trimmed (same batches cut to their longest window: same model, fewer columns) |
    # bucketed (samples sorted by length within pools of bucket_pool batches, then trimmed: much
    # cheaper when most histories are shorter than max_len, e.g. ML-1M at max_len 1000)
    batching: str = "padded"
    bucket_pool: int = 16
    # what training may see: train (the validation item is held out for model selection and
    # early stopping) | train+valid (a refit: train also on each user's validation item, for
    # exactly `epochs` epochs, no validation, test scored with the final weights; take the epoch
    # count from a train run's best epoch, `elasticrec refit RUN`). generative-recommenders'
    # published ML-1M numbers are trained this way (their train set drops only the test item).
    fit: str = "train"
    deterministic: bool = False
    num_threads: int | None = None
    progress: bool = True


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20, 50, 200])
    exclude_history: bool = True
    batch_size: int = 256
    protocol: str = "full"  # full | sampled (labelled SAMPLED in every output)
    n_negatives: int = 100
    negative_sampling: str = "popularity"  # popularity | uniform
    select_metric: str = "NDCG@10"
    seed: int = 2024
    # history items the model reads for each evaluated user: None = model.max_len (the training
    # window); 0 = the whole history; N = the most recent N. Beyond max_len it needs a model whose
    # positions do not stop at max_len (ELASTIC with pos_encoding chunk, learned-start or none;
    # SASRec or LinRec with none or rotary); others are refused
    history_len: int | None = None
    # [ablation] leave each user's N most recent history items out of the model's input (the
    # window ends N items earlier; they stay in the history the ranking excludes), to see how much
    # a score rests on the latest items. At least the oldest item is always fed. 0: off
    drop_recent: int = 0


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run_dir: str | None = None  # default: runs/<dataset>-<model>-<timestamp>


CHOICES: dict[str, tuple[str, ...]] = {
    "model.pos_encoding": ("learned", "learned-start", "chunk", "none", "rotary"),
    "model.score": ("dot", "cosine"),
    "model.elastic.chunk_align": ("end", "start"),
    "model.elastic.memory_query_norm": ("layernorm", "batchnorm", "none"),
    "model.elastic.memory_site": ("dispatchers", "tokens", "queries"),
    "model.hstu.attn_norm": ("max_len", "causal"),
    "train.schedule": ("constant", "cosine"),
    "train.windows": ("last", "all", "random"),
    "train.batching": ("padded", "trimmed", "bucketed"),
    "train.fit": ("train", "train+valid"),
    "train.loss": ("ce", "sampled", "bce"),
    "train.negatives_per": ("batch", "position"),
    "train.ce_impl": ("chunked", "plain"),
    "train.amp": ("auto", "bf16", "off"),
    "eval.protocol": ("full", "sampled"),
    "eval.negative_sampling": ("popularity", "uniform"),
}


# ----------------------------------------------------------------------------- conversion
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; allow int->float and list<->tuple."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: expected {_tname(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for section {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        if isinstance(value, str):  # "1,5,10" from the command line
            value = [v for v in value.split(",") if v.strip()]
            value = [yaml.safe_load(v) for v in value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r} (YAML reads unquoted "
                              f"on/off/yes/no as true/false: quote the value)")
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {tp}")


def _tname(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def from_dict(cls: type, d: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from a (possibly partial) dict, rejecting unknown keys."""
    return cls(**{k: _field_value(v, tp, path) for k, v, path, tp in _known_keys(cls, d, where)})


def _known_keys(cls: type, d: dict, where: str):
    """``(key, value, dotted path, field type)`` for each item of ``d``; an unknown key raises."""
    hints = _hints(cls)
    for k, v in d.items():
        path = f"{where}.{k}" if where else k
        if k not in hints:
            names = ", ".join(f.name for f in dataclasses.fields(cls))
            raise ConfigError(f"unknown key '{path}'; valid keys here: {names}")
        yield k, v, path, hints[k]


# YAML 1.1 (PyYAML) reads unquoted off/no/false and on/yes/true as booleans
_YAML_BOOL_WORDS = {False: ("off", "no", "false"), True: ("on", "yes", "true")}


def _bool_as_choice(path: str, value: Any) -> Any:
    """``train.amp=off`` arrives as ``False``; give back the word when it is one of the
    option's choices, so that the unquoted spelling works as written."""
    choices = CHOICES.get(path)
    if isinstance(value, bool) and choices is not None:
        for word in _YAML_BOOL_WORDS[value]:
            if word in choices:
                return word
    return value


def _check_choice(path: str, value: Any) -> None:
    choices = CHOICES.get(path)
    if choices is not None and value not in choices:
        raise ConfigError(f"{path}: invalid value {value!r}; choose one of {', '.join(choices)}")


def _field_value(value: Any, tp: Any, path: str) -> Any:
    """A YAML/override value for field ``path`` of type ``tp``: type-checked and, where the
    field has a fixed set of choices, one of them (what both from_dict and merge apply)."""
    value = _coerce(_bool_as_choice(path, value), tp, path)
    _check_choice(path, value)
    return value


def merge(cfg: Any, d: dict, where: str = "") -> Any:
    """Return a copy of dataclass ``cfg`` with the (nested) values of ``d`` applied."""
    updates = {}
    for k, v, path, tp in _known_keys(type(cfg), d, where):
        cur = getattr(cfg, k)
        if dataclasses.is_dataclass(cur) and isinstance(v, dict):
            updates[k] = merge(cur, v, path)
        else:
            updates[k] = _field_value(v, tp, path)
    return dataclasses.replace(cfg, **updates)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def parse_override(text: str) -> dict:
    """``"train.lr=1e-3"`` -> ``{"train": {"lr": 0.001}}`` (value parsed as a YAML scalar)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: cannot parse value: {e}") from None
    out: dict = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    try:
        d = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return d


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: ExperimentConfig | None = None) -> ExperimentConfig:
    """Defaults <- optional YAML file (may name ``base:`` presets) <- ``key=value`` overrides."""
    cfg = base or ExperimentConfig()
    if path is not None:
        d = load_yaml(path)
        bases = d.pop("base", None)
        if bases:
            for b in [bases] if isinstance(bases, str) else bases:
                cfg = load_config(Path(path).parent / b, base=cfg)
        try:
            cfg = merge(cfg, d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    for o in overrides or []:
        cfg = merge(cfg, parse_override(o))
    return cfg


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    from elasticrec.utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
