"""Run configuration: dataclasses loaded from TOML with ``--set section.key=value`` overrides.

A variant (backbone, with/without EM3, history mode) is a TOML file under ``em3rec/configs/``; every
key not in a file keeps the default below. Unknown keys are errors, never ignored.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from em3rec.errors import UserError

CONFIG_DIR = Path(__file__).parent / "configs"

# Options whose values are a fixed set. The loader enforces them (``validate_config``); every other
# list of allowed values in the package is derived from these (``choices``).
Backbone = Literal["dlrm", "dcn", "din"]
ContentVariant = Literal["none", "frozen", "em3"]  # ID only | pooled pre-extracted vectors | EM3
SeqContentMode = Literal["none", "frozen", "lora", "full", "cached", "pooled"]
QFormerAttention = Literal["self", "cross"]
EmbeddingOptimizer = Literal["rowwise_adagrad", "adagrad", "adam", "sgd"]
Device = Literal["auto", "cpu", "cuda"]
NanPolicy = Literal["stop", "skip"]
PrecisionSetting = Literal["auto", "fp32", "bf16"]  # of the dense forward (em3rec.precision)
ColdItemRows = Literal["as_trained", "from_content"]  # model.cold_item_rows
BatchScope = Literal["rank", "global"]  # what data.batch_size counts: one rank's rows, or all ranks'
ShardingType = Literal["data_parallel", "table_wise", "column_wise", "table_column_wise", "row_wise", "table_row_wise"]


def choices(literal: Any) -> tuple[str, ...]:
    """The allowed values of a ``Literal[...]`` option type, in declaration order."""
    return typing.get_args(literal)


BACKBONES = choices(Backbone)
CONTENT_VARIANTS = choices(ContentVariant)
SEQ_CONTENT_MODES = choices(SeqContentMode)
QFORMER_ATTENTIONS = choices(QFormerAttention)
EMBEDDING_OPTIMIZERS = choices(EmbeddingOptimizer)
SHARDING_TYPES = choices(ShardingType)


class ConfigError(UserError):
    """A config file or override names an unknown key or a value of the wrong type."""


@dataclass
class DataConfig:
    path: str = "data/ml100k"  # prepared dataset folder (see em3rec/data/schema.py)
    batch_size: int = 512  # training rows per step: per rank, or over all ranks (batch_scope)
    # "global": batch_size is split evenly over the ranks, so a run trains with the same batch (and
    # learning rates) at any world size; "rank": every rank reads batch_size rows.
    batch_scope: BatchScope = "rank"
    eval_batch_size: int = 2048  # per rank
    shuffle_buffer: int = 65536  # rows held by the training shuffle buffer
    max_history: int = 50  # history positions fed to the model (<= the dataset's)
    modalities: list[str] = field(default_factory=lambda: ["title", "meta"])
    # Side features (kind single/multi in meta.json, by name) the run leaves out: no table, no
    # column read. A feature ablation without re-preparing the data; [] = every feature.
    drop_features: list[str] = field(default_factory=list)
    pooled_content: bool = False  # one pooled vector per modality instead of its tokens
    # Each modality's tokens averaged in windows of this many consecutive positions (the mask-aware
    # mean), T -> ceil(T / token_window): fewer tokens for the Q-Former to read. 1 = as stored.
    token_window: int = 1
    # Item token tables up to this size (MB per process, in the dtype the model computes in) are
    # converted once and held in memory, so a batch's tokens are one gather, with no cast; larger
    # ones are memory-mapped (shared by a machine's ranks) and cast batch by batch. 0 = never.
    resident_tokens_mb: float = 1024.0
    # Splits up to this many rows are value-checked (labels, ids, nulls) when opened; larger ones
    # batch by batch as they are read, so a bad row stops the job when its rank reaches it.
    scan_rows: int = 1_000_000
    # Batches built ahead in a background thread (its torch ops serial, so that the step's OpenMP
    # team is the process's only one). -1 = auto: 2 on CUDA (the host waits on the GPU, so building
    # the next batch meanwhile is free), 0 on CPU (built in the step's own thread: the step's
    # intra-op threads take every core; ml-100k, 2 cores, 1 process, against the serial thread:
    # din_em3's epochs 1.04-1.23x faster, din_frozen's 0.99-1.08x;
    # benchmarks/results/train_ab_prefetch_serial_thread_ml100k.md).
    prefetch: int = -1

    def rank_batch_size(self, world_size: int) -> int:
        """Training rows per step on one rank of ``world_size``."""
        if self.batch_scope == "rank":
            return self.batch_size
        if self.batch_size % world_size:
            raise ConfigError(
                f"data.batch_size = {self.batch_size} with data.batch_scope = 'global' does not split evenly "
                f"over {world_size} ranks; expected a multiple of {world_size} (or data.batch_scope = 'rank')"
            )
        return self.batch_size // world_size


@dataclass
class QFormerConfig:
    dim: int = 64  # d: width of the projected modality tokens and queries (authors' code: 64)
    num_queries: int = 2  # Q (authors' code: 1 or 2)
    num_layers: int = 1  # authors' code: 1
    num_heads: int = 4
    mlp_ratio: int = 4  # feed-forward hidden width = mlp_ratio * dim
    # Dropout per site (the authors' code drops the attention output only, at 0.5-0.8).
    token_dropout: float = 0.0  # on the projected input tokens
    attention_dropout: float = 0.1  # on each attention branch before its residual add
    ffn_dropout: float = 0.0  # on the feed-forward branch before its residual add
    attention: QFormerAttention = "self"  # "self": over [queries; tokens] (EM3); "cross": BLIP-2-style
    # torch.compile the Q-Former (dynamic shapes, in place: checkpoints unchanged). The same values;
    # the first training and the first eval step pay the compile (~40-70 s on a 2-core CPU).
    compile: bool = False


@dataclass
class LoraConfig:
    rank: int = 4
    alpha: float = 8.0  # scaling = alpha / rank
    dropout: float = 0.0
    # Module names in the Q-Former: every nn.Linear whose qualified name has one of these as a
    # component gets an adapter ("attn": q/k/v/out projections of the self-attention, "cross_attn":
    # those of the BLIP-2 cross-attention, "q_proj" / "k_proj" / "v_proj" / "out_proj": those
    # projections of either, "token_proj": the per-modality token projections, "mlp", "head").
    # Names that match nothing in this Q-Former are skipped. The default adapts the query side
    # only (the queries' attention projections and the feed-forward), so the history branch reuses
    # the token side, keys and values of the tokens, that the base weights give (LoraHistory): an
    # adapter on token_proj, k_proj or v_proj makes it recompute every history item's tokens with
    # gradient (ml-100k DIN: the tower 1.5x and the step 1.12-1.15x slower, with ~equal AUC;
    # benchmarks/results/throughput_ab_lora_query_side_ml100k.md, ml100k_ablation_din_lora_query_side.md).
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "out_proj", "mlp"])
    # Fold each adapter into its Linear for the history call (W + s B A: one matmul per Linear, the
    # adapters' gradients through an (out, in) weight gradient); false runs peft's low-rank forward
    # (x W^T + s (x A^T) B^T). The same values and gradients either way; dropout > 0 needs peft's.
    merge: bool = True
    # With adapters on the query side only: 0 = the history items' token side computed fresh every
    # step; N > 0 = read from a per-item bank (em3rec.modules.context_bank) whose entries are
    # rewritten from the target branch each step and recomputed once older than N steps.
    context_refresh_steps: int = 0


@dataclass
class CICConfig:
    weight: float = 1e-3  # lambda (the authors' code: 1e-3); 0 turns the loss off (no heads built)
    temperature: float = 0.1  # the authors' code: 0.1-0.5
    num_negatives: int = 16  # K > 0: K sampled in-batch negatives (authors: 16); 0: all distinct in-batch items
    dim: int = 64  # width of the projection heads
    # Heads without bias: with a bias, projected IDs start nearly collinear (mean cosine ~0.99) and
    # CIC's first job becomes "push every ID apart".
    head_bias: bool = False
    warmup_steps: int = 0  # lambda ramps linearly from 0 to `weight` over this many training steps
    # Items drawn uniformly from the whole catalogue each training step (per rank) and added to CIC
    # with their content only (never a label): every item's ID row, also of items without a
    # training row, is pulled toward its content. The authors' code runs CIC over the whole table.
    catalogue_samples: int = 0
    # False: the ID embeddings enter CIC detached, so it trains the content tower (and heads) toward
    # the IDs and leaves the ID table to the ranking loss (a distillation of IDs into content).
    id_gradient: bool = True
    # False: the content embeddings enter CIC detached, so it pulls only the ID rows (and heads)
    # toward the content and leaves the content tower to the ranking loss.
    content_gradient: bool = True


@dataclass
class TextEncoderConfig:
    # The text encoder's top layers trained by the ranking loss (em3rec.modules.text_encoder_top):
    # 0 = off (the stored features as they are); k = the top k of all-MiniLM-L6-v2's 6 layers run
    # every step over frozen lower-layer states computed once at build time. Needs
    # data.pooled_content = true (the vectors it writes are the pooled level) and a content variant.
    trainable_layers: int = 0
    modalities: list[str] = field(default_factory=list)  # those re-encoded; empty = every one read
    # The item-level target in the loop (em3rec.modules.item_appeal_head): > 0 adds this weight
    # times the MSE of a Linear regressing each target item's appeal (its train rows' mean of label -
    # user rate, the user rate shrunk by appeal_prior_rows pseudo-rows) from its re-encoded text,
    # over items with >= appeal_min_rows train rows: what benchmarks.tuned_content fits before the ranker.
    appeal_weight: float = 0.0
    appeal_min_rows: int = 20
    appeal_prior_rows: float = 10.0


@dataclass
class ModelConfig:
    backbone: Backbone = "din"
    content: ContentVariant = "em3"  # none (ID only) | frozen (pre-extracted pooled vectors) | em3
    embedding_dim: int = 64  # D: ID embeddings and every feature vector the backbone sees
    # History content (EM3): none | frozen (Q-Former, no gradient) | lora (Q-Former + LoRA adapters) |
    # full | cached (a bank) | pooled (the pooled base alone: the two-stage baseline's history
    # content, the Q-Former reads targets only; needs pooled_base, and the loader then sends tokens
    # of the targets and the catalogue sample only).
    seq_content_mode: SeqContentMode = "lora"
    # EM3 only. True: an item's content embedding is the frozen baseline's (pooled pre-extracted
    # vectors through a Linear) plus the Q-Former's output scaled by a per-dimension gate that starts
    # at 0, so EM3 starts exactly at the two-stage baseline and end-to-end training adds to it.
    # False: the Q-Former's output alone (the paper's form).
    pooled_base: bool = True
    dedup: bool = True  # encode each distinct item once per step (off: every position, the oracle)
    cache_refresh_steps: int = 50  # `cached` mode: recompute a bank entry older than this
    dense_layers: list[int] = field(default_factory=lambda: [128, 64])  # DCN-v2 deep tower (parallel to the cross net)
    over_layers: list[int] = field(
        default_factory=lambda: [256, 128]
    )  # every backbone's final MLP (then a Linear to 1)
    # DLRM: the content vectors also go to the over-arch as they are, beside their pairwise dot
    # products (as DLRM passes its dense vector); False = dot products only, where a per-item
    # content effect must find a partner vector to show through.
    dlrm_raw_content: bool = False
    cross_layers: int = 3  # DCN-v2
    cross_low_rank: int = 32  # DCN-v2 low-rank cross projection
    attention_hidden: list[int] = field(default_factory=lambda: [64, 32])  # DIN attention MLP
    attention_softmax: bool = (
        False  # DIN: False = raw attention weights (the DIN paper), True = softmax over the history
    )
    dropout: float = 0.1  # on the over-arch input
    # Item-ID dropout (DropoutNet): a training row's target-item ID embedding becomes zeros with this
    # probability, and so does that of every item without training rows in evaluation (unless
    # cold_item_rows = "from_content" wrote those rows: then evaluation reads them); 0 = off.
    id_dropout: float = 0.0
    # User-ID dropout, the same for the user feature: 85 % of ml100k-ctr-v1's valid and test rows
    # belong to users without training rows, whose ID embedding no gradient ever moved; 0 = off.
    user_id_dropout: float = 0.0
    # Before each evaluation, the item-table rows of items without training rows: "as_trained" (as
    # training left them) | "from_content" (a ridge regression of the trained rows on the items'
    # content embeddings, fitted on the items with training rows; checkpoints carry the written
    # rows: em3rec/cold_start.py). Content models only.
    cold_item_rows: ColdItemRows = "as_trained"
    # torch.compile the backbone and the content-interest target attention in place (the ranker's
    # dense path; TorchRec's lookups stay eager; checkpoints unchanged). The same values up to float
    # rounding; the first training and evaluation steps pay the compile (seconds). On a 2-core CPU
    # the DIN steps take 0.70x (frozen) to 0.82x (em3) as long (benchmarks/results/README.md, Cost).
    compile_backbone: bool = False
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    cic: CICConfig = field(default_factory=CICConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)


@dataclass
class OptimConfig:
    embedding_optimizer: EmbeddingOptimizer = "rowwise_adagrad"  # fused, in backward
    embedding_lr: float = 0.05
    dense_lr: float = 1e-3
    weight_decay: float = 1e-5
    # The content tower's own AdamW group (Q-Former, its gate and adapters, the pooled projection).
    content_lr: float = 0.0  # 0 = dense_lr
    content_weight_decay: float = 1e-5
    # The text encoder's trainable top layers (model.text_encoder): fine-tuning a pretrained encoder
    # wants a far smaller step than a fresh tower (benchmarks.encoder_probe picked 5e-5 on ml-100k).
    encoder_lr: float = 5e-5
    grad_clip: float = 0.0  # clip the dense gradients' global 2-norm to this before AdamW; 0 = off


@dataclass
class ShardingConfig:
    # Allowed sharding types for the planner; empty = all the device supports
    # (CPU/gloo: table_wise, column_wise, table_column_wise, data_parallel; CUDA adds row_wise).
    types: list[ShardingType] = field(default_factory=list)
    pipeline: bool = True  # TorchRec's TrainPipelineSparseDist where the device allows


@dataclass
class TrainConfig:
    epochs: int = 5  # the most epochs; with `patience`, training may stop earlier
    patience: int = 0  # stop after this many epochs without a better valid AUC; 0 = run every epoch
    seed: int = 0
    device: Device = "auto"
    # The dense forward's compute dtype (torch.autocast; embeddings and parameters stay fp32):
    # "auto" = bf16 on CUDA with bf16 or a CPU with AMX / AVX512-BF16, else fp32 (see em3rec.precision).
    precision: PrecisionSetting = "auto"
    log_every: int = 50  # steps between log lines
    # Also show the libraries' INFO logs (TorchRec's planner search and statistics, FBGEMM's kernel
    # arguments, the train pipeline's events) and their warnings about their own internals
    # (em3rec.run_log.LIBRARY_NOTICES); false: em3rec's lines and the libraries' other warnings.
    library_logs: bool = False
    checkpoint_every: int = 0  # steps between checkpoints; 0 = end of each epoch only
    keep_checkpoints: int = 2
    run_dir: str = "runs"
    run_name: str = ""  # default: the config file's stem
    max_steps_per_epoch: int = 0  # 0 = the whole split (for quick checks)
    # A NaN/inf loss: "stop" raises NonFiniteLossError naming the step and the batch's ids (the
    # losses are read every log_every steps, before a checkpoint and at the epoch's end, so a step
    # does not wait for the device); "skip" drops the batch before backward and the optimiser step
    # (counted in metrics.json; reads each loss, and needs the non-pipelined step, so it turns
    # sharding.pipeline off).
    nan_policy: NanPolicy = "stop"
    nan_skip_limit: int = 20  # "skip": stop after this many skipped batches in a row (0 = no limit)
    # Seconds a collective (all-reduce, all-to-all, barrier) may wait before the job fails. Under
    # torchrun a rank that exits stops the others at once; this bounds a hang without an agent.
    collective_timeout_s: int = 300


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert a TOML or override value to the dataclass field's type."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _build(annotation, value, where)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(_not_allowed(where, value, allowed))
        return value
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: union types are not supported in configs")
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, str, bool, float) and type(value) is not annotation:
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def _not_allowed(where: str, value: Any, allowed: tuple[str, ...]) -> str:
    """The message for a value outside its option's set (``where``: ``model.backbone`` or
    ``sharding.types[1]``, an item of a list option)."""
    if "[" in where:
        return f"{where.split('[', 1)[0]}: {value!r} is not one of {allowed}"
    return f"{where} = {value!r}; expected one of {allowed}"


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # a bare word is a string: --set model.backbone=dcn
    return key.strip().split("."), value


def _merge(base: dict[str, Any], path: list[str], value: Any) -> None:
    node = base
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part!r} is not a section")
    node[path[-1]] = value


def resolve_config_path(name: str | Path, relative_to: Path | None = None) -> Path:
    """A path (an ``include`` first relative to ``relative_to``, the including file's folder), or
    the name of a bundled config (``din_em3`` or ``din_em3.toml`` -> em3rec/configs/din_em3.toml).
    A path with a folder that does not exist is an error, never a bundled config of the same name."""
    path = Path(name)
    near = [relative_to / path] if relative_to is not None and not path.is_absolute() else []
    for candidate in (*near, path):
        if candidate.is_file():
            return candidate
    bundled = CONFIG_DIR / f"{path.stem}.toml"
    if path.parent == Path(".") and bundled.is_file():
        return bundled
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
    if path.parent != Path("."):
        raise ConfigError(f"config {str(name)!r}: no such file (a bundled config is named without a folder: {known})")
    raise ConfigError(f"config {str(name)!r} not found; bundled configs: {known}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a TOML config (optionally ``include = "other"`` first) and apply ``--set`` overrides."""
    values: dict[str, Any] = {}
    run_name = ""
    if path is not None:
        file = resolve_config_path(path)
        values = _load_with_includes(file)
        run_name = file.stem
    for text in overrides or []:
        keys, value = _parse_override(text)
        _merge(values, keys, value)
    config = _build(Config, values, "")
    if not config.train.run_name:
        config.train.run_name = run_name or "default"
    validate_config(config)
    return config


def as_overrides(values: dict[str, Any], prefix: str = "") -> list[str]:
    """``section.key=value`` lines (TOML values) that rebuild a config from its dict form
    (``dataclasses.asdict(config)``, or a run's ``metrics.json`` ``"config"``) through ``--set``."""
    lines = []
    for key, value in values.items():
        if isinstance(value, dict):
            lines += as_overrides(value, f"{prefix}{key}.")
        else:
            lines.append(f"{prefix}{key}={json.dumps(value)}")
    return lines


def _load_with_includes(file: Path) -> dict[str, Any]:
    try:
        values = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{file}: invalid TOML ({e})") from e
    include = values.pop("include", None)
    if include is None:
        return values
    base = _load_with_includes(resolve_config_path(include, relative_to=file.parent))
    _deep_update(base, values)
    return base


def _deep_update(base: dict[str, Any], update: dict[str, Any]) -> None:
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v


def validate_config(config: Config) -> None:
    """Reject values outside their allowed set, naming the option."""
    _check_literals(config, "")
    if config.data.batch_size < 1 or config.data.eval_batch_size < 1:
        raise ConfigError("data.batch_size and data.eval_batch_size must be >= 1")
    if config.model.qformer.dim % config.model.qformer.num_heads:
        raise ConfigError("model.qformer.dim must be divisible by model.qformer.num_heads")
    model = config.model
    for key, value in (
        ("model.qformer.token_dropout", model.qformer.token_dropout),
        ("model.qformer.attention_dropout", model.qformer.attention_dropout),
        ("model.qformer.ffn_dropout", model.qformer.ffn_dropout),
        ("model.dropout", model.dropout),
        ("model.id_dropout", model.id_dropout),
        ("model.user_id_dropout", model.user_id_dropout),
    ):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{key} = {value}; expected a probability in [0, 1)")
    if min(config.optim.content_lr, model.cic.weight, model.cic.warmup_steps, model.cic.catalogue_samples) < 0:
        raise ConfigError(
            "optim.content_lr, model.cic.weight, model.cic.warmup_steps and model.cic.catalogue_samples must be >= 0"
        )
    if model.text_encoder.trainable_layers > 0:
        if model.content == "none":
            raise ConfigError(
                "model.text_encoder.trainable_layers > 0 trains item text; model.content = 'none' reads none"
            )
        if not config.data.pooled_content:
            raise ConfigError(
                "model.text_encoder.trainable_layers > 0 writes one pooled vector per modality; "
                "it needs data.pooled_content = true"
            )
        unknown = [m for m in model.text_encoder.modalities if m not in config.data.modalities]
        if unknown:
            raise ConfigError(
                f"model.text_encoder.modalities {unknown} are not in data.modalities {config.data.modalities}"
            )
        if config.optim.encoder_lr <= 0:
            raise ConfigError(f"optim.encoder_lr = {config.optim.encoder_lr}; expected > 0")
    encoder = model.text_encoder
    if encoder.appeal_weight < 0 or encoder.appeal_min_rows < 1 or encoder.appeal_prior_rows < 0:
        raise ConfigError(
            f"model.text_encoder.appeal_weight = {encoder.appeal_weight}, appeal_min_rows = {encoder.appeal_min_rows}, "
            f"appeal_prior_rows = {encoder.appeal_prior_rows}; expected >= 0, >= 1 and >= 0"
        )
    if encoder.appeal_weight > 0 and encoder.trainable_layers == 0:
        raise ConfigError("model.text_encoder.appeal_weight > 0 trains the text encoder; set trainable_layers > 0")
    if model.text_encoder.trainable_layers < 0:
        raise ConfigError(f"model.text_encoder.trainable_layers = {model.text_encoder.trainable_layers}; expected >= 0")
    if model.cic.temperature <= 0 or model.cic.num_negatives < 0:
        raise ConfigError(
            f"model.cic.temperature = {model.cic.temperature} and model.cic.num_negatives = "
            f"{model.cic.num_negatives}; expected a temperature > 0 and num_negatives >= 0 (0: every other row)"
        )
    if model.cic.weight > 0 and not (model.cic.id_gradient or model.cic.content_gradient):
        raise ConfigError(
            "model.cic.id_gradient and model.cic.content_gradient are both false: CIC would train only its "
            "own heads; set model.cic.weight = 0 to turn it off"
        )
    if model.cold_item_rows == "from_content" and model.content == "none":
        raise ConfigError(
            "model.cold_item_rows = 'from_content' regresses ID rows on content embeddings; "
            "model.content = 'none' has none (use 'frozen' or 'em3')"
        )
    train = config.train
    for key, value, low in (
        ("train.epochs", train.epochs, 1),
        ("train.patience", train.patience, 0),
        ("train.log_every", train.log_every, 1),
        ("train.checkpoint_every", train.checkpoint_every, 0),
        ("train.keep_checkpoints", train.keep_checkpoints, 1),
        ("train.max_steps_per_epoch", train.max_steps_per_epoch, 0),
        ("train.nan_skip_limit", train.nan_skip_limit, 0),
        ("train.collective_timeout_s", train.collective_timeout_s, 1),
        ("data.scan_rows", config.data.scan_rows, 0),
        ("data.token_window", config.data.token_window, 1),
        ("data.prefetch", config.data.prefetch, -1),
    ):
        if value < low:
            raise ConfigError(f"{key} = {value}; expected >= {low}")


def _check_literals(node: Any, where: str) -> None:
    """Every ``Literal[...]`` field (and list of them) of a config tree holds an allowed value
    (also for configs built in code, which bypass the loader's coercion)."""
    hints = typing.get_type_hints(type(node))
    for f in dataclasses.fields(node):
        value, annotation, name = getattr(node, f.name), hints[f.name], f"{where}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_literals(value, f"{name}.")
        elif typing.get_origin(annotation) is Literal and value not in typing.get_args(annotation):
            raise ConfigError(_not_allowed(name, value, typing.get_args(annotation)))
        elif typing.get_origin(annotation) is list:
            (item,) = typing.get_args(annotation)
            allowed = typing.get_args(item) if typing.get_origin(item) is Literal else None
            for i, v in enumerate(value if allowed else ()):
                if v not in allowed:
                    raise ConfigError(_not_allowed(f"{name}[{i}]", v, allowed))
