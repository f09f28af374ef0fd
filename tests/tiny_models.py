"""Tiny random models of every supported family, with a tokenizer trained on bundled text.

They run in milliseconds, so training, resume, DDP and encoding tests stay fast.
"""
import functools
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = os.path.join(HERE, "data", "multilingual.txt")
FAMILIES = ("xlm-roberta", "bert", "labse", "e5", "mbart", "mt5")


TOKENIZER = os.path.join(HERE, "data", "tiny-unigram.json")


def train_tokenizer_json(vocab_size: int = 3000) -> str:
    """A Unigram tokenizer (XLM-R's kind) trained on the bundled text.

    The trainer's scores differ from run to run (its EM sums in parallel, in hash order), and
    so do the token ids; tests read the copy stored in ``TOKENIZER`` so that every run feeds the
    same ids to the same random weights. ``python tests/tiny_models.py`` rewrites it.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers, decoders

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, unk_token="<unk>",
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.train([TEXT], trainer)
    return tok.to_str()


@functools.lru_cache(maxsize=None)
def _tokenizer_json() -> str:
    with open(TOKENIZER, encoding="utf-8") as fh:
        return fh.read()


def make_tokenizer():
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_tokenizer_json())
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>", cls_token="<s>",
                                   sep_token="</s>", mask_token="<mask>", model_max_length=512)


def _config(family: str, vocab_size: int, pad_id: int):
    import transformers as tf

    small = dict(vocab_size=vocab_size, pad_token_id=pad_id)
    bert_like = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=300, **small)
    if family == "xlm-roberta":
        return tf.XLMRobertaConfig(**bert_like)
    if family in ("bert", "labse", "e5"):
        return tf.BertConfig(**bert_like)
    if family == "mbart":
        return tf.MBartConfig(d_model=32, encoder_layers=2, decoder_layers=1,
                              encoder_attention_heads=2, decoder_attention_heads=2,
                              encoder_ffn_dim=64, decoder_ffn_dim=64,
                              max_position_embeddings=300, **small)
    if family == "mt5":
        return tf.MT5Config(d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=1,
                            num_heads=2, decoder_start_token_id=pad_id, **small)
    raise ValueError(family)


def make_tiny_model(directory, family: str = "xlm-roberta", seed: int = 0) -> str:
    """Write a tiny random model of ``family`` (HF folder) into ``directory``; return its path.

    The folder name carries the family ("tiny-labse", "tiny-e5") because model families that
    share an architecture (BERT, LaBSE, mE5) are told apart by name, as on the hub.
    """
    import torch
    import transformers as tf

    path = os.path.join(str(directory), f"tiny-{family}")
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    tokenizer = make_tokenizer()
    config = _config(family, len(tokenizer), tokenizer.pad_token_id)
    torch.manual_seed(seed)
    if family == "mt5":
        model = tf.MT5EncoderModel(config)
    else:
        model = tf.AutoModel.from_config(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def turn_off_dropout(model_dir) -> None:
    """Set the folder's config.json dropout probabilities to 0 (in place), for tests that
    compare runs whose dropout masks would differ (processes, devices)."""
    path = os.path.join(str(model_dir), "config.json")
    with open(path, encoding="utf-8") as fh:
        config = json.load(fh)
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(config, fh)


def texts():
    """Lines of the bundled text for encoder tests."""
    with open(TEXT, encoding="utf-8") as fh:
        lines = [line.strip() for line in fh if line.strip()]
    # short and long lines of several scripts, full-width forms, whitespace runs
    return lines[:40] + [" ".join(lines[:30]), "ＡＢＣ，１２３？", "two  spaces ", "x"]


def padded(token_ids, pad_id):
    """Right-padded ``(input_ids, attention_mask)`` of token id lists."""
    import torch

    width = max(map(len, token_ids))
    ids = torch.full((len(token_ids), width), pad_id)
    mask = torch.zeros((len(token_ids), width), dtype=torch.long)
    for i, row in enumerate(token_ids):
        ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
    return ids, mask


if __name__ == "__main__":
    with open(TOKENIZER, "w", encoding="utf-8") as fh:
        fh.write(train_tokenizer_json())
    print(f"wrote {TOKENIZER}")
