"""A small C4-style corpus and a word-level Hugging Face tokenizer, made locally: the MLPerf data path
(json.gz shards -> ``dsv3 preprocess`` -> .bin/.idx -> training and evaluation) without the hub or C4.

The text is sentences of a few dozen words from a fixed grammar, so a proxy model learns it within
tens of steps and reaches the benchmark's 3.60 validation-loss target (the unigram entropy alone is
below it). Documents are json lines ``{"text", "timestamp", "url"}`` like C4's.

    python -m dsv3_recipes.data.proxy_data OUT_DIR   # OUT_DIR/tokenizer, OUT_DIR/raw/*.json.gz

Needs ``tokenizers`` and ``transformers`` (train side).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys

EOS = "<|end_of_text|>"  # Llama 3.1's end-of-text token name: preprocessing ends documents with it
UNK = "<unk>"
SUBJECTS = ("the cat", "a dog", "the model", "my friend", "the river", "a student")
VERBS = ("sees", "likes", "follows", "reads", "finds", "builds")
OBJECTS = ("the book", "a tree", "the road", "a house", "the song", "a river")
ENDINGS = ("today .", "again .", "slowly .", "at night .", ".")
TRAIN_SHARDS = ("c4-train.00000-of-01024.json.gz", "c4-train.00001-of-01024.json.gz")
VALIDATION_SHARD = "c4-validation-91205-samples.en.json.gz"


def vocabulary() -> list[str]:
    words = {w for phrase in (*SUBJECTS, *VERBS, *OBJECTS, *ENDINGS) for w in phrase.split()}
    return [UNK, EOS, *sorted(words)]


def write_tokenizer(directory: str) -> str:
    """A whitespace word-level fast tokenizer with an EOS token, saved as a Hugging Face directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(vocabulary())}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, unk_token=UNK)
    fast.save_pretrained(directory)
    return directory


def document(rng: random.Random, sentences: int) -> str:
    parts = [
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}"
        for _ in range(sentences)
    ]
    return " ".join(parts)


def write_shard(path: str, documents: int, seed: int) -> str:
    """``documents`` json lines of 5-60 sentences each, reproducible from ``seed``."""
    rng = random.Random(seed)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i in range(documents):
            record = {"text": document(rng, rng.randint(5, 60)), "timestamp": "2019-04-25T12:00:00Z"}
            record["url"] = f"https://example.org/{seed}/{i}"
            f.write(json.dumps(record) + "\n")
    return path


def write_corpus(
    directory: str, train_documents: int = 400, validation_documents: int = 1000
) -> dict[str, str]:
    """The tokenizer and raw train and validation shards under ``directory``; returns their paths."""
    raw = os.path.join(directory, "raw")
    os.makedirs(raw, exist_ok=True)
    paths = {"tokenizer": write_tokenizer(os.path.join(directory, "tokenizer"))}
    for seed, name in enumerate(TRAIN_SHARDS):
        paths[name] = write_shard(os.path.join(raw, name), train_documents, seed)
    paths["validation"] = write_shard(os.path.join(raw, VALIDATION_SHARD), validation_documents, seed=1000)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory")
    p.add_argument("--train-documents", type=int, default=400, help="per train shard")
    p.add_argument("--validation-documents", type=int, default=1000)
    args = p.parse_args(argv)
    for name, path in write_corpus(args.directory, args.train_documents, args.validation_documents).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
