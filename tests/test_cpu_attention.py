"""hbt-encode's attention kernels (AMX, AVX512-BF16: each where this CPU runs it) against a
float64 attention written out here, and their fallback for inputs they do not take (compiling
and loading: test_native.py)."""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import assert_kernel_as_close, encoder_with_and_without_kernel, record_kernel_calls

from hbt_tools.models import cpu_attention as ca
from hbt_tools.models import fast_encoder, packed_encoder
from hbt_tools.models.fast_encoder import FastBertEncoder
from hbt_tools.models.packed_encoder import packed_forward

needs_kernel = pytest.mark.skipif(ca.load_kernel() is None,
                                  reason="no AVX512-BF16 CPU or no C compiler with OpenMP here")
# each kernel this CPU runs, by name (an AMX CPU runs both)
each_kernel = pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.skipif(ca.kernel(name) is None,
                                                reason=f"the {name} kernel does not run here"))
    for name in ca.KERNELS])


def reference_attention(qkv, lengths, heads):
    """softmax(Q K^T / sqrt(d)) V over each text's first ``length`` keys, in float64."""
    batch, length, width = qkv.shape
    q, k, v = qkv.double().view(batch, length, 3, heads, -1).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    real = torch.arange(length)[None, :] < lengths[:, None]
    scores = scores.masked_fill(~real[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, -1)


def sdpa_bf16(qkv, mask, heads):
    batch, length, _ = qkv.shape
    q, k, v = qkv.view(batch, length, 3, heads, -1).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.bool()[:, None, None, :])
    return out.transpose(1, 2).reshape(batch, length, -1)


def random_case(batch, length, heads, head_size, seed):
    gen = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(batch, length, 3 * heads * head_size, generator=gen) * 2).bfloat16()
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return qkv, lengths, mask


@each_kernel
@pytest.mark.parametrize("batch,length,heads,head_size", [
    (3, 37, 12, 32), (5, 256, 12, 32), (7, 512, 2, 32), (1, 1, 12, 32), (2, 17, 1, 32),
    (2, 70, 4, 64), (4, 100, 3, 96), (2, 33, 2, 128)])
def test_as_accurate_as_pytorchs_bf16_attention(name, batch, length, heads, head_size):
    """Lengths off the 16- and 32-key tile edges, one token, padded rows (their queries attend
    to the real keys, as PyTorch's do): the error against float64 is PyTorch's bf16 error."""
    qkv, lengths, mask = random_case(batch, length, heads, head_size, seed=length)
    want = reference_attention(qkv, lengths, heads)
    got = ca.cpu_attention(qkv, mask, heads, ca.kernel(name))
    assert got.dtype == torch.bfloat16 and got.shape == (batch, length, heads * head_size)
    ours = (got.double() - want).abs()
    torchs = (sdpa_bf16(qkv, mask, heads).double() - want).abs()
    assert ours.max() <= torchs.max() * 1.05 + 1e-6
    assert ours.mean() <= torchs.mean() * 1.02 + 1e-9
    # bf16 output rounding alone is up to 2^-9 relative; the rest must be far smaller
    assert ((got.double() - want).abs() <= want.abs() * 2 ** -8 + 0.02).all()


@each_kernel
def test_numerators_do_not_overflow_on_large_scores(name):
    qkv, lengths, mask = random_case(2, 40, 2, 32, seed=1)
    qkv = (qkv.float() * 30).bfloat16()  # scores in the thousands
    got = ca.cpu_attention(qkv, mask, 2, ca.kernel(name))
    want = reference_attention(qkv, lengths, 2)
    assert torch.isfinite(got).all()
    assert ((got.double() - want).abs() <= want.abs() * 2 ** -7 + 0.5).all()


@needs_kernel
def test_inputs_it_does_not_take_go_back_to_the_caller():
    qkv, _, mask = random_case(2, 20, 2, 32, seed=2)
    assert ca.cpu_attention(qkv, mask, 2) is not None
    assert ca.cpu_attention(qkv.float(), mask, 2) is None
    assert ca.cpu_attention(qkv.clone().requires_grad_(), mask, 2) is None
    assert ca.cpu_attention(qkv, mask, 4) is None  # head size 16
    holed = mask.clone()
    holed[0, 3] = 0
    assert ca.cpu_attention(qkv, holed, 2) is None  # not a right-padded row
    empty = mask.clone()
    empty[1] = 0
    assert ca.cpu_attention(qkv, empty, 2) is None


@pytest.fixture(scope="module")
def wide_head_bert(tmp_path_factory):
    """A random BERT with 32-wide heads (the tiny test models' are 16), saved as a folder."""
    import transformers as tf

    folder = tmp_path_factory.mktemp("bert32")
    torch.manual_seed(0)
    config = tf.BertConfig(vocab_size=99, hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=128,
                           max_position_embeddings=64, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
    tf.BertModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def batch():
    ids = torch.randint(5, 99, (4, 50), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(50)[None, :] < torch.tensor([50, 31, 7, 2])[:, None]).long()
    return ids, mask


@needs_kernel
def test_fast_encoder_uses_it_in_bf16(monkeypatch, wide_head_bert):
    encoder = FastBertEncoder(json.loads((wide_head_bert / "config.json").read_text()),
                              load_file(str(wide_head_bert / "model.safetensors")))
    ids, mask = batch()
    exact, with_kernel, without, calls = encoder_with_and_without_kernel(
        monkeypatch, encoder, ids, mask, fast_encoder, "cpu_attention")
    assert calls == [True, True]  # both layers
    assert_kernel_as_close(with_kernel, without, exact, mask, factor=1.1)


@needs_kernel
def test_packed_forward_uses_it_in_eval_mode_only(monkeypatch, wide_head_bert):
    """Validation (eval, bf16 autocast) runs the kernel per length group; train mode never
    does, even without dropout and gradients: gradient caching's no-grad pass must compute
    what its pass with gradients computes."""
    import transformers as tf

    model = tf.BertModel.from_pretrained(wide_head_bert).eval()
    ids, mask = batch()
    with torch.no_grad():
        exact = packed_forward(model, ids, mask).last_hidden_state
        calls = record_kernel_calls(monkeypatch, packed_encoder, "cpu_attention")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with_kernel = packed_forward(model, ids, mask).last_hidden_state
            assert calls and all(calls)
            model.train()
            calls.clear()
            packed_forward(model, ids, mask)
            assert calls == []
            model.eval()
            monkeypatch.setattr(packed_encoder, "cpu_attention", lambda *a: None)
            without = packed_forward(model, ids, mask).last_hidden_state
    assert_kernel_as_close(with_kernel, without, exact, mask, factor=1.1)
