"""Tokenizers of the real classes and layouts, learned here from a built-in corpus (no download).

- `clip_tokenizer`: a `CLIPTokenizer` over CLIP's vocabulary layout (256 bytes, 256 bytes + `</w>`, BPE
  merges, then the two specials), so common words become one or two tokens as with the real vocabulary.
- `t5_tokenizer`: a `T5TokenizerFast` (SentencePiece-style unigram, `<pad>` 0, `</s>` 1, `<unk>` 2, an
  end-of-sequence token appended), the layout of SD3's and Flux's T5 tokenizer.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path

__all__ = ["CORPUS", "clip_tokenizer", "t5_tokenizer", "CLIP_MAX_LENGTH"]

CLIP_MAX_LENGTH = 77  # CLIP's context length: SD-family code pads every prompt to it

CORPUS = """
a photo of a cat sitting on a red chair. a painting of two dogs in a green field at sunset.
a red square, a blue circle and a yellow triangle on a white background. an astronaut riding a horse.
a close up portrait of a woman with long hair, studio lighting, high quality, detailed, sharp focus.
a black and white drawing of a house by the sea. a city street at night in the rain, neon lights.
a bowl of fruit on a wooden table; apples, oranges and bananas. mountains covered in snow under a clear sky.
an oil painting of a ship in a storm, dramatic clouds. a cute small bird on a tree branch in spring.
a digital illustration of a castle in the forest, fantasy art, trending, 4k, beautiful colors.
"""
_NUM_MERGES = 400


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def _learn_merges(corpus: str, num_merges: int) -> list[tuple[str, str]]:
    """Plain BPE (Sennrich et al., 2016) on CLIP's pre-tokenised words; ties broken by the pair, so deterministic."""
    byte_char = _bytes_to_unicode()
    # CLIP's pre-tokeniser on lowercased ASCII text: letter runs, single digits, punctuation runs.
    words = Counter(re.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+", corpus.lower()))
    seqs: dict[tuple[str, ...], int] = {}
    for word, n in words.items():
        chars = [byte_char[b] for b in word.encode("utf-8")]
        seqs[tuple(chars[:-1]) + (chars[-1] + "</w>",)] = n  # the last symbol carries CLIP's end-of-word mark
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for seq, n in seqs.items():
            for pair in zip(seq, seq[1:]):
                pairs[pair] += n
        if not pairs:  # every word is a single token
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        seqs = {_merge_pair(seq, best): n for seq, n in seqs.items()}
    return merges


def _merge_pair(seq: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """`seq` with every non-overlapping occurrence of `pair`, left to right, fused into one symbol."""
    out, i = [], 0
    while i < len(seq):
        if seq[i:i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return tuple(out)


def clip_tokenizer(max_length: int = CLIP_MAX_LENGTH):
    """A CLIPTokenizer over CLIP's vocabulary layout: 256 bytes, 256 bytes + `</w>`, merges, then the specials."""
    from transformers import CLIPTokenizer

    byte_chars = list(_bytes_to_unicode().values())
    merges = _learn_merges(CORPUS, _NUM_MERGES)
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    for a, b in merges:
        if a + b not in tokens:  # two different pairs can spell the same token
            tokens.append(a + b)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    # Through vocab.json/merges.txt files: the one argument form that both the slow (transformers 4) and the
    # tokenizers-backed (transformers 5) CLIPTokenizer accept; the tokenizer keeps no reference to the files.
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp, "vocab.json"), Path(tmp, "merges.txt")
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=max_length)


def t5_tokenizer(vocab_size: int = 256, max_length: int = 64):
    """A T5TokenizerFast: a unigram model (SentencePiece's algorithm, `▁` word marks) trained on the corpus
    with the `tokenizers` library; T5's special ids and its `</s>` suffix. Deterministic for a given corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    sentences = [s.strip() for s in re.split(r"[.;]\s*", CORPUS) if s.strip()]
    tok.train_from_iterator(sentences, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", eos)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=max_length)
