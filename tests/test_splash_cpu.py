"""Splash attention on the CPU (Pallas interpret mode) against plain XLA attention, alone and inside
shard_map on a sharded CPU mesh; the config's backend-name check; the HLO collective parser.
None of these needs libtpu (the compiles for TPU slices are in test_tpu_compile.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax.model import BertConfig
from bertjax.model import attention as attn
from bertjax.train import aot
from bertjax.train import mesh as mesh_lib


def _qkv_mask(b=4, s=128, h=4, d=32, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(b, s, h, d)), jnp.float32) for _ in range(3))
    lengths = np.array([s, 77, 128 - 61, 5][:b])
    mask = jnp.asarray((np.arange(s)[None] < lengths[:, None]).astype(np.int32))
    return q, k, v, mask, lengths


def _real_rows(x, lengths):
    return [np.asarray(x[i, :n]) for i, n in enumerate(lengths)]


def test_splash_interpret_equals_xla_attention_with_padding():
    q, k, v, mask, lengths = _qkv_mask()
    want = attn.xla_attention(q, k, v, mask)
    got = attn.splash_attention(q, k, v, mask, interpret=True)
    for g, w in zip(_real_rows(got, lengths), _real_rows(want, lengths)):
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5)


def test_splash_inside_shard_map_on_a_cpu_mesh_equals_xla():
    """Batch over (data, fsdp) and heads over tensor, as in a sharded step: same numbers."""
    q, k, v, mask, lengths = _qkv_mask(b=4, h=4)
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    want = attn.xla_attention(q, k, v, mask)

    @jax.jit
    def sharded(q, k, v, mask):
        with attn.on_mesh(mesh, mesh_lib.BATCH_AXES, "tensor"):
            return attn.splash_attention(q, k, v, mask, interpret=True)

    got = sharded(q, k, v, mask)
    for g, w in zip(_real_rows(got, lengths), _real_rows(want, lengths)):
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5)


def test_config_checks_the_backend_name_only(capsys):
    BertConfig(attention_backend="splash", attention_dropout=0.0)
    BertConfig(attention_backend="cudnn", attention_dropout=0.0)
    assert capsys.readouterr().err == ""  # no "needs a TPU (platform is cpu)" at config time
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        BertConfig(attention_backend="flash")
    with pytest.raises(ValueError, match="cannot apply attention_dropout"):
        BertConfig(attention_backend="splash", attention_dropout=0.1)


def test_collective_parser_reads_tuples_and_tiled_layouts():
    hlo = """
  %all-reduce.72 = (f32[]{:T(128)}, f32[128]{0:T(128)S(1)}, /*index=2*/bf16[4,8]{1,0:T(8,128)(2,1)}) all-reduce(%a, %b, %c), channel_id=1
  %ag = bf16[16,128]{1,0:T(8,128)(2,1)} all-gather-start(%x), dimensions={0}
  %x.1 = f32[2]{0} add(%p, %q)
"""
    got = {c.kind: (c.count, c.bytes) for c in aot.collectives(hlo)}
    assert got == {"all-reduce": (1, 4 + 128 * 4 + 4 * 8 * 2), "all-gather": (1, 16 * 128 * 2)}
