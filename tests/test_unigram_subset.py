"""A Unigram tokenizer built for the characters of some texts gives the whole tokenizer's ids for
them (hbt_tools.models.unigram_subset), with far fewer pieces; FastTokenizer switches to the
whole tokenizer for texts the subset does not cover."""
import functools
import json
import os
import shutil

import pytest
from tokenizers import Tokenizer

from tiny_models import make_tiny_model, texts

from hbt_tools.models.fast_tokenizer import FastTokenizer
from hbt_tools.models.unigram_subset import UnigramSubset

# characters the tiny vocabulary lacks (so <unk>, scored from the lowest score), an added
# token's text, emoji, combining marks that NFKC composes, full-width forms it folds
ODD_TEXTS = ["𠀀 ideographs 𠀁 outside every vocabulary", "a <mask> in the middle",
             "smile 😀 and e\u0301 and ｆｕｌｌ width", "  spaces   and\ttabs  ", "", "x"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HBT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models"), "xlm-roberta")


@functools.lru_cache(maxsize=4)
def whole_tokenizer(path: str, mtime_ns: int) -> Tokenizer:
    return Tokenizer.from_file(path)


def whole_ids(folder, batch, max_length=None):
    path = os.path.join(folder, "tokenizer.json")
    whole = whole_tokenizer(path, os.stat(path).st_mtime_ns)
    if max_length:
        whole.enable_truncation(max_length)
    else:
        whole.no_truncation()
    return [e.ids for e in whole.encode_batch(batch)]


def subset_ids(folder, batch):
    subset = UnigramSubset.open(str(folder))
    coverage = subset.coverage(batch)
    assert coverage is not None
    tokenizer = subset.tokenizer(coverage)
    return [e.ids for e in tokenizer.encode_batch(batch)], tokenizer


def test_the_same_ids_as_the_whole_tokenizer_with_fewer_pieces(folder):
    for batch in ([t for t in texts() if t.isascii()][:40], texts(), ODD_TEXTS[:1]):
        ids, tokenizer = subset_ids(folder, batch)
        assert ids == whole_ids(folder, batch)
        whole = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        assert tokenizer.get_vocab_size() == whole.get_vocab_size()  # placeholders hold ids
        # distinct pieces (the placeholders count once)
        assert len(tokenizer.get_vocab()) < len(whole.get_vocab())
    ascii_only = subset_ids(folder, [t for t in texts() if t.isascii()][:40])[1]
    assert len(ascii_only.get_vocab()) < 0.6 * len(whole.get_vocab())


def test_text_with_an_added_token_is_left_to_the_whole_tokenizer(folder):
    subset = UnigramSubset.open(str(folder))
    assert subset.coverage(["a <mask> in the middle"]) is None
    tokenizer = FastTokenizer(str(folder))
    assert tokenizer(ODD_TEXTS)["input_ids"] == whole_ids(folder, ODD_TEXTS)


def test_fast_tokenizer_loads_the_whole_one_for_characters_outside_its_subset(folder):
    tokenizer = FastTokenizer(str(folder))
    english, rest = [t for t in texts() if t.isascii()], [t for t in texts() if not t.isascii()]
    assert tokenizer(english[:5], max_length=9)["input_ids"] == whole_ids(folder, english[:5], 9)
    subset_backend = tokenizer.backend
    assert tokenizer(english[5:10])["input_ids"] == whole_ids(folder, english[5:10])
    assert tokenizer.backend is subset_backend  # covered: no reload
    assert tokenizer(rest)["input_ids"] == whole_ids(folder, rest)
    assert tokenizer.backend is not subset_backend
    assert tokenizer(ODD_TEXTS)["input_ids"] == whole_ids(folder, ODD_TEXTS)
    whole = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    assert tokenizer.pad_token_id == whole.token_to_id("<pad>")


def test_read_once_into_the_cache_and_again_after_an_edit(folder, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    assert UnigramSubset.open(str(copy)) is not None
    cached = os.listdir(tmp_path / "cache" / "tokenizers")
    assert len(cached) == 1 and cached[0].endswith(".npz")
    assert UnigramSubset.open(str(copy)) is not None
    assert os.listdir(tmp_path / "cache" / "tokenizers") == cached
    spec = json.loads((copy / "tokenizer.json").read_text())
    spec["model"]["vocab"] = spec["model"]["vocab"][:-1]  # the last piece gone
    (copy / "tokenizer.json").write_text(json.dumps(spec))
    batch = texts()
    ids = subset_ids(copy, batch)[0]
    assert ids == whole_ids(copy, batch)
    assert len(os.listdir(tmp_path / "cache" / "tokenizers")) == 2


def test_other_tokenizers_are_loaded_whole(folder, tmp_path):
    from tokenizers import models, pre_tokenizers

    copy = tmp_path / "wordpiece"
    shutil.copytree(folder, copy)
    chars = sorted(set("".join(texts())) - {" "})
    vocab = {piece: i for i, piece in enumerate(["[UNK]", "<pad>"] + chars
                                               + ["##" + c for c in chars])}
    wordpiece = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    wordpiece.save(str(copy / "tokenizer.json"))
    assert UnigramSubset.open(str(copy)) is None
    tokenizer = FastTokenizer(str(copy))
    assert tokenizer(texts())["input_ids"] == whole_ids(copy, texts())
    assert tokenizer.pad_token_id == 1


@pytest.mark.slow
def test_real_tokenizer_on_xquad_r_in_11_languages():
    """mE5's tokenizer (XLM-R's 250k pieces): one language at a time, then all at once."""
    from test_offline_model import xquad_texts

    from hbt_tools.models.folder import resolve_model_path

    folder = resolve_model_path("multilingual-e5-small")
    sample = ["passage: " + t for t in xquad_texts(per_language=40)]
    per_language = len(sample) // 11
    for start in range(0, len(sample), per_language):
        batch = sample[start:start + per_language]
        assert subset_ids(folder, batch)[0] == whole_ids(folder, batch)
    ids, tokenizer = subset_ids(folder, sample)
    assert ids == whole_ids(folder, sample)
    assert len(tokenizer.get_vocab()) < 0.8 * tokenizer.get_vocab_size()
