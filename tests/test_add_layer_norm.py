"""hbt-encode's fused residual add + layer norm against a float64 one, and its fallbacks."""
import pytest
import torch
import torch.nn.functional as F

from hbt_tools.models import add_layer_norm as fused
from hbt_tools.models import fast_encoder
from hbt_tools.models.fast_encoder import FastBertEncoder
from conftest import assert_kernel_as_close, encoder_with_and_without_kernel
from tiny_models import make_tiny_model

needs_kernel = pytest.mark.skipif(fused.load_kernel() is None,
                                  reason="no AVX512-BF16 CPU or no C compiler with OpenMP here")


def bf16_inputs(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    a = (torch.randn(shape, generator=gen) * 3 + 1).bfloat16()
    b = torch.randn(shape, generator=gen).bfloat16()
    weight = (torch.randn(shape[-1], generator=gen) * 0.2 + 1).bfloat16()
    bias = (torch.randn(shape[-1], generator=gen) * 0.1).bfloat16()
    return a, b, weight, bias


@needs_kernel
@pytest.mark.parametrize("shape", [(5, 384), (1, 16), (3, 7, 768), (2, 1024), (4, 8192)])
def test_closer_to_exact_than_pytorchs_bf16_ops(shape):
    a, b, weight, bias = bf16_inputs(shape, seed=shape[-1])
    exact = F.layer_norm(a.double() + b.double(), shape[-1:], weight.double(), bias.double(),
                         1e-12)
    got = fused.add_layer_norm(a, b, weight, bias, 1e-12)
    assert got.dtype == torch.bfloat16 and got.shape == a.shape
    ours = (got.double() - exact).abs()
    torchs = (F.layer_norm(a + b, shape[-1:], weight, bias, 1e-12).double() - exact).abs()
    assert ours.mean() <= torchs.mean()
    assert ours.max() <= torchs.max() + 1e-9
    # nothing but the output's rounding: half a bf16 step (2^-9 relative), plus float32 slack
    assert (ours <= exact.abs() * 2 ** -8 + 1e-5).all()


@needs_kernel
def test_a_constant_row_gives_the_bias():
    a = torch.full((2, 32), 3.0).bfloat16()
    b = torch.zeros(2, 32).bfloat16()
    weight, bias = torch.ones(32).bfloat16(), torch.arange(32.0).bfloat16()
    assert torch.equal(fused.add_layer_norm(a, b, weight, bias, 1e-12), bias.expand(2, 32))


@needs_kernel
def test_inputs_it_does_not_take_go_back_to_the_caller():
    a, b, weight, bias = bf16_inputs((3, 64), seed=1)
    assert fused.add_layer_norm(a, b, weight, bias, 1e-5) is not None
    assert fused.add_layer_norm(a.float(), b, weight, bias, 1e-5) is None
    assert fused.add_layer_norm(a.clone().requires_grad_(), b, weight, bias, 1e-5) is None
    assert fused.add_layer_norm(a, b[:2], weight, bias, 1e-5) is None
    narrow = bf16_inputs((3, 40), seed=2)  # width not a multiple of 16
    assert fused.add_layer_norm(*narrow, 1e-5) is None


@needs_kernel
def test_fast_encoder_uses_it_in_bf16(monkeypatch, tmp_path):
    """Every layer's two residual norms run on it (the tiny model's width is 32), and the
    hidden states are at least as close to the fp32 model's as with PyTorch's bf16 ops."""
    from safetensors.torch import load_file

    from hbt_tools.models.folder import fast_path_config

    folder = make_tiny_model(tmp_path, "bert")
    encoder = FastBertEncoder(fast_path_config(folder), load_file(f"{folder}/model.safetensors"))
    ids = torch.randint(5, 300, (3, 40), generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(40)[None, :] < torch.tensor([40, 22, 3])[:, None]).long()
    exact, with_kernel, without, calls = encoder_with_and_without_kernel(
        monkeypatch, encoder, ids, mask, fast_encoder, "add_layer_norm")
    assert calls == [True] * 4  # 2 layers x 2 norms
    assert_kernel_as_close(with_kernel, without, exact, mask, factor=1.05)
