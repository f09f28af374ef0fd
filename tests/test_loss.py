"""InfoNCE against an explicit reference, and gradient caching against the plain loss."""
import math

import pytest
import torch

from batch_factory import make_batches
from tiny_models import make_tiny_model


def reference_info_nce(queries, passages, targets, temperature):
    """Explicit loop over queries: -log softmax of the own positive among all passages."""
    total = 0.0
    for i in range(len(queries)):
        scores = [float(queries[i] @ passages[j]) / temperature for j in range(len(passages))]
        top = max(scores)
        log_norm = top + math.log(sum(math.exp(s - top) for s in scores))
        total += log_norm - scores[int(targets[i])]
    return total / len(queries)


def test_info_nce_matches_explicit_loop():
    from hbt_tools.training.loss import info_nce_loss

    gen = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(5, 8, generator=gen), dim=-1)
    passages = torch.nn.functional.normalize(torch.randn(12, 8, generator=gen), dim=-1)
    targets = torch.tensor([0, 1, 2, 3, 4])
    for tau in (0.05, 1.0):
        got = float(info_nce_loss(queries, passages, targets, tau))
        assert got == pytest.approx(reference_info_nce(queries, passages, targets, tau),
                                    rel=1e-5)


def test_info_nce_stays_float32_under_bf16_autocast():
    from hbt_tools.training.loss import info_nce_loss

    gen = torch.Generator().manual_seed(2)
    queries = torch.nn.functional.normalize(torch.randn(4, 16, generator=gen), dim=-1)
    passages = torch.nn.functional.normalize(torch.randn(9, 16, generator=gen), dim=-1)
    targets = torch.arange(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = info_nce_loss(queries, passages, targets, 0.05)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(reference_info_nce(queries, passages, targets, 0.05),
                                       rel=1e-5)


def test_info_nce_targets_anywhere_and_permutation_invariant():
    from hbt_tools.training.loss import info_nce_loss

    gen = torch.Generator().manual_seed(1)
    queries = torch.nn.functional.normalize(torch.randn(3, 4, generator=gen), dim=-1)
    passages = torch.nn.functional.normalize(torch.randn(7, 4, generator=gen), dim=-1)
    targets = torch.tensor([6, 0, 3])
    perm = torch.randperm(7, generator=gen)
    inverse = torch.argsort(perm)
    a = info_nce_loss(queries, passages, targets, 0.05)
    b = info_nce_loss(queries, passages[perm], inverse[targets], 0.05)
    assert float(a) == pytest.approx(reference_info_nce(queries, passages, targets, 0.05),
                                     rel=1e-5)
    assert float(a) == pytest.approx(float(b), rel=1e-6)


@pytest.fixture(scope="module")
def tiny_xlmr(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models run fastest on one thread
    yield make_tiny_model(tmp_path_factory.mktemp("models"), "xlm-roberta")
    torch.set_num_threads(threads)


def _setup(path):
    from hbt_tools.models.encoder import load_biencoder
    from hbt_tools.training.batches import BatchTokenizer
    from hbt_tools.training.distributed import DistContext

    biencoder, tokenizer = load_biencoder(path)
    biencoder.float()
    batch = make_batches(1, items=7, negatives=2, seed=3)[0]
    tokenized = BatchTokenizer(tokenizer, biencoder.settings, DistContext())(
        batch["kind"], batch["items"], "test", 1)
    n = tokenized.queries["input_ids"].shape[0]
    targets = torch.arange(n)

    def loss_fn(q, p):
        from hbt_tools.training.loss import info_nce_loss
        return info_nce_loss(q, p, targets, 0.05)
    return biencoder, tokenized, loss_fn


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_gradient_cache_equals_plain_loss_without_dropout(tiny_xlmr, dtype, tolerance):
    """Dropout off: the whole batch in one pass (padded to its longest text) is the reference.
    In float64 the two agree to rounding; in float32 the different padding of chunks changes
    the summation order, which the 1/τ = 20 scale amplifies to 3e-6 .. 8e-6 (seen) on
    gradients of magnitude ~1."""
    from hbt_tools.training.gradcache import cached_step, plain_step, split_chunks

    biencoder, batch, loss_fn = _setup(tiny_xlmr)
    biencoder.to(dtype).eval()
    plain_loss = plain_step(biencoder, split_chunks(batch.queries, None),
                            split_chunks(batch.passages, None), loss_fn)
    plain = _grads(biencoder)
    biencoder.zero_grad(set_to_none=True)
    cached_loss = cached_step(biencoder, split_chunks(batch.queries, 3),
                              split_chunks(batch.passages, 4), loss_fn, torch.device("cpu"))
    cached = _grads(biencoder)
    assert float(cached_loss) == pytest.approx(float(plain_loss), abs=1e-6)
    assert max(float(g.abs().max()) for g in plain.values()) > 1e-4  # the check is not vacuous
    diff = _max_diff(plain, cached)
    largest = max(float(g.abs().max()) for g in plain.values())
    print(f"gradcache vs plain, dropout off, {dtype}: max |grad diff| = {diff:.2e} "
          f"(max |grad| {largest:.2e})")
    assert diff < tolerance


def test_gradient_cache_replays_dropout(tiny_xlmr):
    """Dropout on: the reference encodes the same chunks in one graph from the same RNG state;
    GradCache must reproduce its masks (RNG replay) and therefore its gradients."""
    from hbt_tools.training.gradcache import cached_step, plain_step, split_chunks

    biencoder, batch, loss_fn = _setup(tiny_xlmr)
    biencoder.train()
    q_chunks, p_chunks = split_chunks(batch.queries, 3), split_chunks(batch.passages, 4)

    def reference(seed):
        torch.manual_seed(seed)
        biencoder.zero_grad(set_to_none=True)
        loss = plain_step(biencoder, q_chunks, p_chunks, loss_fn)
        return float(loss), _grads(biencoder), torch.get_rng_state()

    ref_loss, ref_grads, ref_rng_after = reference(7)
    other_seed = reference(8)[1]
    assert _max_diff(ref_grads, other_seed) > 1e-4  # dropout really changes the gradients

    torch.manual_seed(7)
    biencoder.zero_grad(set_to_none=True)
    loss = cached_step(biencoder, q_chunks, p_chunks, loss_fn, torch.device("cpu"))
    diff = _max_diff(ref_grads, _grads(biencoder))
    print(f"gradcache vs plain, dropout on: max |grad diff| = {diff:.2e}")
    assert float(loss) == pytest.approx(ref_loss, abs=1e-6)
    assert diff < 1e-5
    assert torch.equal(torch.get_rng_state(), ref_rng_after)  # the RNG stream moves on alike


def test_length_sorted_chunks_keep_each_rows_embedding(tiny_xlmr):
    """Chunks are cut from length-sorted rows; every embedding must come back to its own row,
    equal (dropout off) to encoding the whole batch padded to its longest row."""
    from hbt_tools.training.gradcache import encode_chunks, split_chunks

    biencoder, batch, _ = _setup(tiny_xlmr)
    biencoder.double().eval()
    lengths = batch.passages["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 2  # rows really get reordered
    whole = biencoder(**batch.passages)
    chunks = split_chunks(batch.passages, 2)
    assert [int(p["attention_mask"].sum(1).max()) for p in chunks.parts] == \
        [p["input_ids"].shape[1] for p in chunks.parts]  # each chunk trimmed to its longest
    with torch.no_grad():
        assert torch.allclose(encode_chunks(biencoder, chunks), whole, atol=1e-12)


def test_lr_schedule_warms_up_then_decays_to_zero():
    from hbt_tools.training.trainer import lr_factor

    factors = [lr_factor(s, 2, 6) for s in range(7)]
    assert factors == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0])
    assert [lr_factor(s, 0, 4) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])
