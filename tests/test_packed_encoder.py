"""hbt-train's packed BERT / XLM-R forward and fast dropout, against transformers and against
their defining properties."""
import itertools
import random

import pytest
import torch
import torch.nn.functional as F

from conftest import needs_cuda
from tiny_models import make_tiny_model, padded, texts

from hbt_tools.models import packed_encoder
from hbt_tools.models.dropout import dropout, keep_mask
from hbt_tools.models.embedding_grad import embedding_rows
from hbt_tools.models.encoder import load_biencoder
from hbt_tools.models.packed_encoder import (GROUP_OVERHEAD, PackedLayout, length_groups,
                                             packed_forward, supports_packing)

FAMILIES = ("xlm-roberta", "bert")
# hbt-train packs on the CPU only (transformers' padded forward is faster on a GPU), but
# packed_forward itself must stay right on any device.
DEVICES = ("cpu", pytest.param("cuda", marks=needs_cuda))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {family: make_tiny_model(root, family) for family in FAMILIES + ("mbart",)}


def batch(tokenizer, count=12):
    """Sequences of 3 to ~60 tokens: several attention groups."""
    rows = tokenizer(texts()[:count - 1] + [" ".join(texts()[:8])], truncation=True,
                     max_length=64)["input_ids"]
    return padded(rows, tokenizer.pad_token_id)


def no_dropout(x, p, training):
    return x


@pytest.fixture(autouse=True)
def small_group_overhead(monkeypatch):
    """The tiny models' short sequences and 2 heads would make one group: cut more, but not
    so much that no group has padding."""
    monkeypatch.setattr(packed_encoder, "GROUP_OVERHEAD", 1500)


@pytest.mark.parametrize("family", FAMILIES)
def test_outputs_and_gradients_equal_transformers(models, family, monkeypatch):
    """Train mode with dropout replaced by the identity (so the explicit attention used in
    training runs) against transformers in eval mode: same embeddings, same gradients."""
    monkeypatch.setattr(packed_encoder, "dropout", no_dropout)
    reference, tokenizer = load_biencoder(models[family])
    reference.packable = False  # transformers' own forward
    packed, _ = load_biencoder(models[family])
    assert packed.packable and supports_packing(packed.model)
    ids, mask = batch(tokenizer)
    groups = PackedLayout(mask, packed.config.num_attention_heads).groups
    assert len(groups) > 1 and any(g.pad_keys.any() for g in groups)
    weights = torch.randn(ids.shape[0], packed.config.hidden_size, generator=torch.Generator()
                          .manual_seed(0))
    reference.eval()
    packed.train()
    for biencoder in (reference, packed):
        (biencoder(ids, mask) * weights).sum().backward()
    assert torch.allclose(packed(ids, mask), reference(ids, mask), atol=1e-5)
    named = dict(reference.named_parameters())
    compared = 0
    for name, param in packed.named_parameters():
        want = named[name].grad
        if want is None:  # the pooler: mean pooling never reaches it
            assert param.grad is None, name
            continue
        scale = want.abs().max().clamp(min=1e-4)  # the key bias: zero up to rounding
        assert (param.grad - want).abs().max() / scale < 1e-4, name
        compared += 1
    assert compared > 10


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", FAMILIES)
def test_eval_mode_and_left_padding_equal_transformers(models, family, device):
    """No dropout: the SDPA branch; left-padded rows too (positions and groups from the mask)."""
    biencoder, tokenizer = load_biencoder(models[family])
    model = biencoder.model.eval().to(device)
    ids, mask = (t.to(device) for t in batch(tokenizer))
    lengths = mask.sum(1)
    left_ids, left_mask = torch.full_like(ids, tokenizer.pad_token_id), torch.zeros_like(mask)
    for i, n in enumerate(lengths.tolist()):
        left_ids[i, ids.shape[1] - n:], left_mask[i, ids.shape[1] - n:] = ids[i, :n], 1
    with torch.no_grad():
        for input_ids, attention_mask in ((ids, mask), (left_ids, left_mask)):
            want = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            have = packed_forward(model, input_ids, attention_mask).last_hidden_state
            real = attention_mask.bool()
            assert torch.allclose(have[real], want[real], atol=1e-5)
            assert (have[~real] == 0).all()


def test_dropout_where_bert_has_it(models, monkeypatch):
    """transformers' BERT drops out the embeddings, the attention probabilities and the output
    of both dense sublayers, at the config's rates; nothing else."""
    calls = []

    def spy(x, p, training):
        calls.append((tuple(x.shape), p, training))
        return x

    monkeypatch.setattr(packed_encoder, "dropout", spy)
    biencoder, tokenizer = load_biencoder(models["bert"])
    config = biencoder.config
    ids, mask = batch(tokenizer)
    layout = PackedLayout(mask, config.num_attention_heads)
    biencoder.train()
    biencoder(ids, mask)
    hidden = ((int(mask.sum()), config.hidden_size), config.hidden_dropout_prob, True)
    probabilities = [((g.count, config.num_attention_heads, g.length, g.length),
                      config.attention_probs_dropout_prob, True) for g in layout.groups]
    assert calls == [hidden] + (probabilities + [hidden, hidden]) * config.num_hidden_layers


@pytest.mark.parametrize("device", DEVICES)
def test_validation_and_encoding_run_packed_too(models, device, monkeypatch):
    """Eval mode (hbt-train's validation, a hub model hbt-encode hands to transformers) skips
    the padding as well; test_eval_mode_and_left_padding_equal_transformers checks the numbers.
    On a GPU, training and validation run transformers' forward."""
    from hbt_tools.models import encoder

    calls = []
    monkeypatch.setattr(encoder, "packed_forward",
                        lambda *args: calls.append(args) or packed_forward(*args))
    biencoder, tokenizer = load_biencoder(models["xlm-roberta"])
    biencoder.to(device).eval()
    with torch.no_grad():
        biencoder(*(t.to(device) for t in batch(tokenizer)))
    assert len(calls) == (1 if device == "cpu" else 0)


def test_other_families_are_not_packed(models):
    biencoder, _ = load_biencoder(models["mbart"])
    assert not biencoder.packable


def test_dropout_is_seeded_by_torch_and_differs_between_draws(models):
    biencoder, tokenizer = load_biencoder(models["xlm-roberta"])
    ids, mask = batch(tokenizer)
    biencoder.train()
    outputs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        with torch.no_grad():
            outputs.append(biencoder(ids, mask))
    assert torch.equal(outputs[0], outputs[1])
    assert (outputs[0] - outputs[2]).abs().max() > 1e-3
    with torch.no_grad():
        assert not torch.equal(biencoder(ids, mask), biencoder(ids, mask))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_mask_rate_and_independence(p):
    torch.manual_seed(0)
    n = 2_000_000
    first, second = keep_mask(torch.Size([n]), p), keep_mask(torch.Size([n]), p)
    exact = 1 - round(p * 2 ** 16) / 2 ** 16
    sd = (exact * (1 - exact) / n) ** 0.5
    for mask in (first, second):
        assert abs(mask.double().mean().item() - exact) < 5 * sd
    # independent draws: P(both kept) = exact^2; neighbours independent too
    both = (first & second).double().mean().item()
    assert abs(both - exact ** 2) < 5 * sd
    neighbours = (first[1:] & first[:-1]).double().mean().item()
    assert abs(neighbours - exact ** 2) < 5 * sd


def test_dropout_scales_kept_elements_and_keeps_gradients():
    torch.manual_seed(0)
    x = torch.full((1000, 100), 2.0, requires_grad=True)
    y = dropout(x, 0.25, True)
    kept = y != 0
    assert torch.allclose(y[kept], torch.tensor(2.0 / 0.75))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)
    assert torch.allclose(x.grad[kept], torch.tensor(1 / 0.75))
    assert dropout(x, 0.25, False) is x and dropout(x, 0.0, True) is x


def _cost(groups, lengths, heads):
    return sum(heads * len(g) * max(lengths[i] for i in g) ** 2 + GROUP_OVERHEAD
               for g in groups)


def test_length_groups_partition_and_are_optimal(monkeypatch):
    """Against every contiguous partition of the sorted lengths (brute force)."""
    monkeypatch.setattr(packed_encoder, "GROUP_OVERHEAD", GROUP_OVERHEAD)
    rng = random.Random(0)
    for _ in range(30):
        lengths = [rng.choice([3, 5, 8, 20, 40, 90, 150]) for _ in range(rng.randint(1, 9))]
        heads = rng.choice([1, 12])
        groups = length_groups(lengths, heads)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        best = min(
            _cost([order[a:b] for a, b in zip((0,) + cuts, cuts + (len(order),))], lengths,
                  heads)
            for k in range(len(order))
            for cuts in itertools.combinations(range(1, len(order)), k))
        assert _cost(groups, lengths, heads) == pytest.approx(best)


def test_layout_packs_and_unpacks_every_real_token():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    layout = PackedLayout(mask, heads=1)
    values = torch.arange(20.0).view(4, 5, 1)
    packed = layout.pack(values)
    assert sorted(packed.flatten().tolist()) == sorted(values[mask.bool()].flatten().tolist())
    back = layout.unpack(packed)
    assert torch.equal(back[mask.bool()], values[mask.bool()])
    assert (back[~mask.bool()] == 0).all()


def test_row_gradients_equal_dense_embedding_gradients():
    """Two lookups per backward, two backwards per step, repeated ids, four steps with
    zero_grad(set_to_none=True), some with a foreign in-place write to the gradient (as a
    gradient all-reduce writes rows this process never looked up): always F.embedding's dense
    gradient."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(50, 4, generator=gen, requires_grad=True)
    reference = weight.detach().clone().requires_grad_()
    for step in range(4):
        for _ in range(2):
            ids = [torch.randint(0, 50, (n,), generator=gen) for n in (7, 12)]
            upstream = [torch.randn(len(i), 4, generator=gen) for i in ids]
            sum((embedding_rows(weight, i) * u).sum() for i, u in zip(ids, upstream)).backward()
            sum((F.embedding(i, reference) * u).sum()
                for i, u in zip(ids, upstream)).backward()
            assert torch.allclose(weight.grad, reference.grad, atol=1e-6), step
        if step % 2 == 0:
            other_rank = torch.randn(50, 4, generator=gen)
            weight.grad.add_(other_rank)
            reference.grad.add_(other_rank)
        weight.grad = reference.grad = None


def test_a_kept_gradient_is_never_overwritten():
    """A caller holding last step's gradient (the tensor, or a view of it) keeps its values."""
    weight = torch.zeros(10, 2, requires_grad=True)
    embedding_rows(weight, torch.tensor([1, 2])).sum().backward()
    held, view = weight.grad, weight.grad.detach()[1]
    expected = held.clone()
    for kept in (held, view):
        weight.grad = None
        embedding_rows(weight, torch.tensor([3])).sum().backward()
        assert weight.grad is not held and torch.equal(held, expected)
        assert weight.grad[:3].abs().sum() == 0 and weight.grad[3].tolist() == [1.0, 1.0]
        del held
        held = kept
    # nothing held any more: the kept tensor is reused, its old rows zeroed
    address = weight.grad.data_ptr()  # the kept tensor is alive, so no new one can have it
    del held, view, kept
    weight.grad = None
    embedding_rows(weight, torch.tensor([5])).sum().backward()
    assert weight.grad.data_ptr() == address
    assert weight.grad.sum() == 2 and weight.grad[5].tolist() == [1.0, 1.0]
