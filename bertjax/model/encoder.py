"""The BERT encoder in Flax NNX: embeddings, post-LN transformer layers, pooler.

Parameters are float32 and carry logical axis names (nnx.with_partitioning) so train/mesh.py can
shard them without touching this file. Compute runs in `cfg.dtype`; LayerNorm and softmax in float32.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from bertjax.errors import UserError
from bertjax.model import attention as attn_lib
from bertjax.model import lora as lora_lib
from bertjax.model.archs import ARCHS


class ModelConfigError(UserError, ValueError):
    """A model config that cannot build a model: the commands print it as one line."""


def _field(default, doc: str, arch: bool = False):
    # `arch` marks what the weights are (copied from a checkpoint by init_from and by every
    # import); the rest is how a run computes with them.
    return dataclasses.field(default=default, metadata={"arch": arch, "doc": doc})


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The one encoder's knobs. This field list is the model's only one: the config schema
    (config.model_config), presets, the Hugging Face config tables and init-from's architecture
    check all derive from it. Default knobs build BERT's parameter tree exactly."""

    arch: str = _field("bert", "the family member (Hugging Face model_type): model/archs.py",
                       arch=True)
    vocab_size: int = _field(30522, "word embedding rows", arch=True)
    hidden_size: int = _field(768, "H", arch=True)
    embedding_size: int = _field(0, "E, the embedding width; 0 = H, else an E->H projection",
                                 arch=True)
    num_layers: int = _field(12, "depth L", arch=True)
    num_heads: int = _field(12, "attention heads", arch=True)
    intermediate_size: int = _field(3072, "FFN width", arch=True)
    num_hidden_groups: int = _field(0, "0 = every layer its own weights; G = G shared layers, "
                                    "layer l runs group l*G//L", arch=True)
    max_position_embeddings: int = _field(512, "position table rows (offset included)", arch=True)
    position_offset: int = _field(0, "0 = positions 0..S-1; k > 0 = real tokens count from k "
                                  "and padding sits at k-1 (fairseq/RoBERTa: pad id + 1)",
                                  arch=True)
    type_vocab_size: int = _field(2, "segment types: 2, 1 (always 0) or 0 (none)", arch=True)
    pad_token_id: int = _field(0, "the tokenizer's padding id", arch=True)
    hidden_act: str = _field("gelu", "gelu (exact erf), gelu_tanh or relu", arch=True)
    layer_norm_eps: float = _field(1e-12, "LayerNorm epsilon", arch=True)
    pooler_act: str = _field("tanh", "the [CLS] head's activation: tanh (BERT's pooler, RoBERTa's "
                             "classifier), gelu (ELECTRA's classifier) or relu (DistilBERT's "
                             "pre_classifier)", arch=True)
    position_biased_input: bool = _field(True, "absolute position embeddings added to the input; "
                                         "false = none (DeBERTa)", arch=True)
    relative_attention: bool = _field(False, "DeBERTa's disentangled attention: relative position "
                                      "embeddings shared by every layer", arch=True)
    pos_att_type: str = _field("", "DeBERTa's extra attention terms, '|'-separated: c2p "
                               "(content->position), p2c (position->content); each also widens "
                               "the score scale to sqrt(d * (1 + terms))", arch=True)
    position_buckets: int = _field(0, "DeBERTa-v2: relative distances exact within +/- buckets/2, "
                                   "log-spaced beyond (0 = no buckets, distances clipped)",
                                   arch=True)
    max_relative_positions: int = _field(0, "DeBERTa: the longest distance the log buckets (or, "
                                         "without buckets, the table) span; 0 = "
                                         "max_position_embeddings", arch=True)
    norm_rel_ebd: str = _field("none", "DeBERTa-v2: LayerNorm on the relative embeddings "
                               "(layer_norm) or none", arch=True)
    generator_hidden_size: int = _field(0, "ELECTRA: the generator's width (0 = no generator); "
                                        "it shares the embeddings and has the same depth",
                                        arch=True)
    generator_num_heads: int = _field(0, "ELECTRA: the generator's heads (0 = max(1, width/64))",
                                      arch=True)
    generator_intermediate_size: int = _field(0, "ELECTRA: the generator's FFN width (0 = 4x "
                                              "its width)", arch=True)
    hidden_dropout: float = _field(0.1, "dropout on hidden states")
    attention_dropout: float = _field(0.1, "dropout on attention probabilities")
    initializer_range: float = _field(0.02, "truncated normal stddev of fresh weights")
    attention_backend: str = _field("auto", "auto (cudnn on GPU, splash on TPU, xla elsewhere), "
                                    "xla, cudnn or splash")
    dtype: str = _field("float32", "compute dtype; LayerNorm, softmax and losses stay float32")
    param_dtype: str = _field("float32", "parameter dtype")
    remat: str = _field("none", "per-layer rematerialisation: none, full or dots")
    scan_layers: bool = _field(False, "one scanned layer holding every layer's weights stacked")
    num_labels: int = _field(2, "classifier outputs (1 = regression)")
    # LoRA adapters (model/lora.py), set from the run's `lora` config section, not the model's.
    lora_rank: int = _field(0, "LoRA rank r; 0 = no adapters")
    lora_alpha: float = _field(8.0, "LoRA alpha: the update is scaled by alpha/r")
    lora_dropout: float = _field(0.0, "dropout on the adapters' input")
    lora_targets: str = _field(lora_lib.DEFAULT_TARGETS, "the adapted maps, comma-separated: "
                               + ", ".join(lora_lib.TARGETS))

    @classmethod
    def from_dict(cls, d, what: str = "the model config") -> "BertConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(dict(d)) - names)
        if unknown:
            raise ModelConfigError(
                f"{what} has keys this bertjax does not know: {', '.join(unknown)}; it was "
                "written by another version or for another model (known keys: "
                f"{', '.join(sorted(names))})")
        try:
            return cls(**dict(d))
        except TypeError as e:
            raise ModelConfigError(f"{what} is not a valid model config: {e}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_length(self) -> int:
        """The longest input: the position table less its offset (514 rows hold 512 at pad 1)."""
        return self.max_position_embeddings - self.position_offset

    @property
    def relative_span(self) -> int:
        """DeBERTa: half the rows of the relative embedding table (distances -span..span-1)."""
        return self.position_buckets or self.max_relative_positions or self.max_position_embeddings

    @property
    def attention_terms(self) -> tuple[str, ...]:
        return tuple(t for t in ("c2p", "p2c") if t in self.pos_att_type.split("|"))

    @property
    def embedding_width(self) -> int:
        return self.embedding_size or self.hidden_size

    def generator_config(self) -> "BertConfig":
        """ELECTRA's generator: this encoder at the generator's width, reading the same
        embedding tables (so at the same embedding width E, projected to its own width)."""
        width = self.generator_hidden_size
        if not width:
            raise ModelConfigError("this model has no generator: set model.generator_hidden_size")
        return dataclasses.replace(
            self, hidden_size=width, num_heads=self.generator_num_heads or max(1, width // 64),
            intermediate_size=self.generator_intermediate_size or 4 * width,
            embedding_size=self.embedding_width, generator_hidden_size=0, generator_num_heads=0,
            generator_intermediate_size=0)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ModelConfigError(f"model.arch={self.arch!r} is not an architecture this bertjax "
                                   f"knows ({', '.join(sorted(ARCHS))})")
        if self.hidden_size % self.num_heads:
            raise ModelConfigError(
                f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        if self.lora_rank:
            lora_lib.check(self.lora_rank, self.lora_alpha, self.lora_dropout, self.lora_targets)
        if self.generator_hidden_size > self.hidden_size:
            raise ModelConfigError(
                f"model.generator_hidden_size={self.generator_hidden_size} is wider than the "
                f"discriminator (hidden_size={self.hidden_size}); ELECTRA's generator is 1/4 to "
                "1 times its width (a strong generator leaves the discriminator nothing to learn)")
        if self.generator_hidden_size < 0 or self.generator_num_heads < 0 or \
                self.generator_intermediate_size < 0:
            raise ModelConfigError("model.generator_* sizes must be >= 0")
        gen_heads = self.generator_num_heads or max(1, self.generator_hidden_size // 64)
        if self.generator_hidden_size and self.generator_hidden_size % gen_heads:
            raise ModelConfigError(f"model.generator_hidden_size={self.generator_hidden_size} is "
                                   f"not a multiple of its {gen_heads} heads")
        if self.pooler_act not in POOLER_ACTS:
            raise ModelConfigError(f"pooler_act must be one of {', '.join(POOLER_ACTS)}, got "
                                   f"{self.pooler_act!r}")
        if self.hidden_act not in ACTIVATIONS:
            raise ModelConfigError(f"hidden_act must be one of {sorted(ACTIVATIONS)}, got "
                                   f"{self.hidden_act!r}")
        if self.remat not in REMAT_POLICIES:
            raise ModelConfigError(f"remat must be one of {sorted(REMAT_POLICIES)}, got "
                                   f"{self.remat!r}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ModelConfigError(f"{name} must be one of {DTYPES}, got "
                                       f"{getattr(self, name)!r}")
        if self.type_vocab_size < 0 or self.embedding_size < 0 or self.position_offset < 0:
            raise ModelConfigError("type_vocab_size, embedding_size and position_offset must be "
                                   ">= 0")
        groups = self.num_hidden_groups
        if groups and (groups > self.num_layers or self.num_layers % groups):
            raise ModelConfigError(f"model.num_hidden_groups={groups} does not divide "
                                   f"model.num_layers={self.num_layers} (layer l runs group "
                                   "l*G/L, so every group must cover as many layers); use a "
                                   "divisor of num_layers, 1 for ALBERT's one shared layer")
        if groups and self.scan_layers:
            raise ModelConfigError("scan_layers stacks one set of weights per layer; with shared "
                                   "layers (num_hidden_groups > 0) set model.scan_layers=false")
        terms = [t for t in self.pos_att_type.split("|") if t]
        if any(t not in ("c2p", "p2c") for t in terms) or len(set(terms)) != len(terms):
            raise ModelConfigError(f"model.pos_att_type={self.pos_att_type!r}: use c2p, p2c, "
                                   "c2p|p2c or '' (DeBERTa's relative attention terms)")
        if terms and not self.relative_attention:
            raise ModelConfigError(f"model.pos_att_type={self.pos_att_type!r} needs "
                                   "model.relative_attention=true (the terms read its table)")
        if self.norm_rel_ebd not in ("none", "layer_norm"):
            raise ModelConfigError(f"model.norm_rel_ebd={self.norm_rel_ebd!r}: use layer_norm or "
                                   "none")
        if self.position_buckets < 0 or self.max_relative_positions < 0:
            raise ModelConfigError("model.position_buckets and model.max_relative_positions must "
                                   "be >= 0 (0 = off, Hugging Face's -1)")
        if self.relative_attention and self.attention_backend in attn_lib.FUSED.values():
            raise ModelConfigError(
                f"model.attention_backend={self.attention_backend!r} cannot run "
                f"{self.arch}'s disentangled attention: the fused kernel takes no bias terms "
                "(c2p/p2c); set model.attention_backend=xla or auto (xla for this arch)")
        try:
            attn_lib.check_backend(self.attention_backend, self.attention_dropout)
        except ValueError as e:
            raise ModelConfigError(str(e)) from None


def arch_fields() -> tuple[str, ...]:
    """The fields that say what the weights are (see `_field`)."""
    return tuple(f.name for f in dataclasses.fields(BertConfig) if f.metadata["arch"])


ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}
POOLER_ACTS = ("tanh", "gelu", "relu")
# Floating types the matmuls can run in (dtype) or params be stored in (param_dtype).
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class DropoutKeys:
    """Hands out a distinct key per dropout site. None means deterministic (eval).

    Keys are derived from one key passed at call time (from the seed and step), so dropout needs no
    RNG state inside the model and a resumed run draws exactly the masks of an unbroken one.
    """

    def __init__(self, key: jax.Array | None):
        self.key = key
        self.count = 0

    def __call__(self) -> jax.Array | None:
        if self.key is None:
            return None
        self.count += 1
        return jax.random.fold_in(self.key, self.count)


def dropout(x, rate: float, keys: DropoutKeys):
    key = keys()
    if key is None or rate <= 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _init(cfg: BertConfig, names):
    return nnx.with_partitioning(nnx.initializers.truncated_normal(cfg.initializer_range), names)


def _zeros(names):
    return nnx.with_partitioning(nnx.initializers.zeros_init(), names)


def _dtype(name: str):
    return jnp.dtype(name)


class LayerNorm(nnx.Module):
    """LayerNorm computed in float32 whatever the compute dtype; the output is cast back."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, size: int | None = None):
        self.norm = nnx.LayerNorm(
            size or cfg.hidden_size,
            epsilon=cfg.layer_norm_eps,
            dtype=jnp.float32,
            param_dtype=_dtype(cfg.param_dtype),
            use_fast_variance=False,
            scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",)),
            bias_init=_zeros(("embed",)),
            rngs=rngs,
        )
        self.out_dtype = _dtype(cfg.dtype)

    def __call__(self, x):
        return self.norm(x.astype(jnp.float32)).astype(self.out_dtype)


def dense(cfg: BertConfig, n_in: int, n_out: int, names, *, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        n_in,
        n_out,
        dtype=_dtype(cfg.dtype),
        param_dtype=_dtype(cfg.param_dtype),
        kernel_init=_init(cfg, names),
        bias_init=_zeros(names[-1:]),
        rngs=rngs,
    )


class Embeddings(nnx.Module):
    """Word + position (+ segment) embeddings of width E, LayerNorm, dropout, and an E->H
    projection when E differs from H (ALBERT, ELECTRA-small)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        width = cfg.embedding_width

        def embed(n, names):
            return nnx.Embed(
                n,
                width,
                dtype=_dtype(cfg.dtype),
                param_dtype=_dtype(cfg.param_dtype),
                embedding_init=_init(cfg, names),
                rngs=rngs,
            )

        self.word_embeddings = embed(cfg.vocab_size, ("vocab", "embed"))
        if cfg.position_biased_input:
            self.position_embeddings = embed(cfg.max_position_embeddings, ("pos", "embed"))
        if cfg.type_vocab_size:
            self.token_type_embeddings = embed(cfg.type_vocab_size, ("type", "embed"))
        self.layer_norm = LayerNorm(cfg, rngs=rngs, size=width)
        if width != cfg.hidden_size:
            self.projection = dense(cfg, width, cfg.hidden_size, ("embed", None), rngs=rngs)
        self.rate = cfg.hidden_dropout
        self.type_vocab_size = cfg.type_vocab_size
        self.position_offset = cfg.position_offset

    def positions(self, seq_len: int, input_mask):
        if not self.position_offset:
            return jnp.arange(seq_len)[None]
        # fairseq's make_positions: real tokens count up from the offset, padding sits just below.
        mask = input_mask.astype(jnp.int32)
        return jnp.cumsum(mask, axis=1) * mask + (self.position_offset - 1)

    def __call__(self, input_ids, segment_ids, keys: DropoutKeys, input_mask=None):
        x = self.word_embeddings(input_ids)
        if hasattr(self, "position_embeddings"):
            x = x + self.position_embeddings(self.positions(input_ids.shape[1], input_mask))
        if self.type_vocab_size > 1:
            x = x + self.token_type_embeddings(segment_ids)
        elif self.type_vocab_size == 1:
            # One type: every token is type 0, whatever segment ids the data carries.
            x = x + self.token_type_embeddings(jnp.zeros((1, 1), jnp.int32))
        x = dropout(self.layer_norm(x), self.rate, keys)
        return self.projection(x) if hasattr(self, "projection") else x


class SelfAttention(nnx.Module):
    """Fused q/k/v projection ([hidden, 3, heads, head_dim]): one matmul instead of three."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        h, nh, hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        common = dict(dtype=_dtype(cfg.dtype), param_dtype=_dtype(cfg.param_dtype), rngs=rngs)
        self.qkv = nnx.Einsum(
            "bsd,dthk->bsthk",
            (h, 3, nh, hd),
            (3, nh, hd),
            kernel_init=_init(cfg, ("embed", None, "heads", None)),
            bias_init=_zeros((None, "heads", None)),
            **common,
        )
        self.out = nnx.Einsum(
            "bshk,hkd->bsd",
            (nh, hd, h),
            (h,),
            kernel_init=_init(cfg, ("heads", None, "embed")),
            bias_init=_zeros(("embed",)),
            **common,
        )
        self.backend = cfg.attention_backend
        self.attention_dropout = cfg.attention_dropout
        self.terms = cfg.attention_terms if cfg.relative_attention else ()
        self.buckets = cfg.position_buckets
        self.max_distance = cfg.max_relative_positions or cfg.max_position_embeddings
        self.lora = lora_lib.adapters(cfg, {
            **{t: ((h,), (nh, hd), ("embed",), ("heads", None)) for t in lora_lib.QKV},
            "attention_output": ((nh, hd), (h,), ("heads", None), ("embed",))}, rngs=rngs)

    def _qkv(self, x, keys):
        qkv = self.qkv(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.lora is not None:
            q, k, v = (lora_lib.add(self.lora, name, t, x, keys)
                       for t, name in zip((q, k, v), lora_lib.QKV))
        return q, k, v

    def __call__(self, x, mask, keys: DropoutKeys, rel=None):
        q, k, v = self._qkv(x, keys)
        if self.terms:
            # DeBERTa's share_att_key: the relative embeddings go through this layer's own query
            # and key maps (adapters included, as where Hugging Face wraps query_proj), so the
            # positions need no projections of their own.
            pos_q, pos_k, _ = self._qkv(rel[None], keys)
            ctx = attn_lib.disentangled_attention(
                q, k, v, mask, pos_q[0], pos_k[0], terms=self.terms, buckets=self.buckets,
                max_distance=self.max_distance, dropout_rate=self.attention_dropout,
                dropout_key=keys())
            return lora_lib.add(self.lora, "attention_output", self.out(ctx), ctx, keys)
        ctx = attn_lib.attend(
            q,
            k,
            v,
            mask,
            backend=self.backend,
            dropout_rate=self.attention_dropout,
            dropout_key=keys(),
        )
        return lora_lib.add(self.lora, "attention_output", self.out(ctx), ctx, keys)


class EncoderLayer(nnx.Module):
    """Post-LN: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.attention = SelfAttention(cfg, rngs=rngs)
        self.attention_layer_norm = LayerNorm(cfg, rngs=rngs)
        self.intermediate = dense(cfg, cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), rngs=rngs)
        self.output = dense(cfg, cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), rngs=rngs)
        self.output_layer_norm = LayerNorm(cfg, rngs=rngs)
        self.act = cfg.hidden_act
        self.rate = cfg.hidden_dropout
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.lora = lora_lib.adapters(cfg, {
            "intermediate": ((h,), (i,), ("embed",), ("mlp",)),
            "output": ((i,), (h,), ("mlp",), ("embed",))}, rngs=rngs)

    def __call__(self, x, mask, keys: DropoutKeys, rel=None):
        if rel is not None:
            # Each layer drops its own copy of the shared relative embeddings (DeBERTa's
            # pos_dropout, at the hidden rate).
            rel = dropout(rel, self.rate, keys)
        a = dropout(self.attention(x, mask, keys, rel), self.rate, keys)
        x = self.attention_layer_norm(x + a)
        z = ACTIVATIONS[self.act](lora_lib.add(self.lora, "intermediate", self.intermediate(x), x,
                                               keys))
        f = lora_lib.add(self.lora, "output", self.output(z), z, keys)
        return self.output_layer_norm(x + dropout(f, self.rate, keys))


class Encoder(nnx.Module):
    """The layer stack. With `scan_layers`, one EncoderLayer holds every layer's parameters
    stacked on a leading "layers" axis and the forward pass is a scan: the compiled program holds
    one layer instead of L, which cuts TPU compile time for Large several-fold. Checkpoints and
    exports always use the per-layer layout (model/layer_stack.py converts)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.policy = REMAT_POLICIES[cfg.remat]
        self.remat = cfg.remat != "none"
        self.scan = cfg.scan_layers
        self.num_layers = cfg.num_layers
        groups = cfg.num_hidden_groups or cfg.num_layers
        # Layer l runs weights l * G // L: G = L is BERT, G = 1 one layer shared by all (ALBERT).
        self.layer_map = tuple(i * groups // cfg.num_layers for i in range(cfg.num_layers))
        if self.scan:
            @nnx.split_rngs(splits=cfg.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def stacked(rngs):
                return EncoderLayer(cfg, rngs=rngs)

            self.layers = stacked(rngs)
        else:
            self.layers = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(groups)])
        if cfg.relative_attention:
            self.relative = RelativeEmbeddings(cfg, rngs=rngs)

    def __call__(self, x, mask, keys: DropoutKeys):
        # One key per layer, drawn the same way with or without remat or scan, so all agree.
        layer_keys = [keys() for _ in range(self.num_layers)]
        rel = self.relative() if hasattr(self, "relative") else None
        run = nnx.remat(_run_layer, policy=self.policy) if self.remat else _run_layer
        if not self.scan:
            for index, key in zip(self.layer_map, layer_keys):
                x = run(self.layers[index], x, mask, key, rel)
            return x
        stacked_keys = None if layer_keys[0] is None else jnp.stack(layer_keys)

        @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)
        def body(h, layer, key):
            return run(layer, h, mask, key, rel)

        if stacked_keys is None:
            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
            def body_nokey(h, layer):
                return run(layer, h, mask, None, rel)

            return body_nokey(x, self.layers)
        return body(x, self.layers, stacked_keys)


def _run_layer(layer, x, mask, key, rel=None):
    return layer(x, mask, DropoutKeys(key), rel)


class RelativeEmbeddings(nnx.Module):
    """DeBERTa's relative position embeddings: one [2 * span, H] table shared by every layer,
    LayerNorm'd once per forward pass when norm_rel_ebd says so."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.table = nnx.Embed(2 * cfg.relative_span, cfg.hidden_size, dtype=_dtype(cfg.dtype),
                               param_dtype=_dtype(cfg.param_dtype),
                               embedding_init=_init(cfg, ("pos", "embed")), rngs=rngs)
        if cfg.norm_rel_ebd == "layer_norm":
            self.layer_norm = LayerNorm(cfg, rngs=rngs)
        self.out_dtype = _dtype(cfg.dtype)

    def __call__(self):
        rel = self.table.embedding[...]
        if hasattr(self, "layer_norm"):
            return self.layer_norm(rel)
        return rel.astype(self.out_dtype)


class Pooler(nnx.Module):
    """dense -> activation on the first token: BERT's pooler, and the first half of RoBERTa's
    (tanh), ELECTRA's (gelu) and DistilBERT's (relu) sequence classifiers, which have no pooler
    of their own."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.dense = dense(cfg, cfg.hidden_size, cfg.hidden_size, ("embed", None), rngs=rngs)
        self.act = cfg.pooler_act

    def __call__(self, sequence_output):
        x = self.dense(sequence_output[:, 0])
        return jnp.tanh(x) if self.act == "tanh" else ACTIVATIONS[self.act](x)


class BertModel(nnx.Module):
    """Embeddings + encoder + pooler. Returns (sequence_output [B,S,H], pooled_output [B,H] or None)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, add_pooler: bool = True):
        self.config = cfg
        self.embeddings = Embeddings(cfg, rngs=rngs)
        self.encoder = Encoder(cfg, rngs=rngs)
        # Token classification and QA read every position, never the pooled [CLS]: no pooler there.
        self.pooler = Pooler(cfg, rngs=rngs) if add_pooler else None

    def __call__(self, input_ids, segment_ids, input_mask, *, dropout_key=None):
        keys = DropoutKeys(dropout_key)
        x = self.embeddings(input_ids, segment_ids, keys, input_mask)
        x = self.encoder(x, input_mask, keys)
        return x, (self.pooler(x) if self.pooler is not None else None)
