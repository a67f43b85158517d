"""An English text corpus and a byte-level BPE tokenizer, made offline from what the machine ships.

Throughput of an MoE model depends on how its router spreads tokens, and Megatron's mock tokens route
very unevenly: benchmark numbers need real text. This builds one with no hub and no download, from
prose that Debian and Python install (Python's pydoc topics, licence texts, package documentation, Vim
help), trains a BPE tokenizer on it with ``tokenizers`` and writes the Megatron .bin/.idx:

    dsv3 corpus OUT_DIR [--max-mb 16] [--vocab-size 32768]

writes OUT_DIR/raw/text.json.gz (json lines ``{"text": ...}``, C4's field), OUT_DIR/tokenizer/,
OUT_DIR/text_text_document.{bin,idx} and OUT_DIR/manifest.json (every source file with its sha256, the
corpus's sha256 and its token count), so two machines can tell whether they built the same corpus. Train
on it with ``dataset.mock=False 'dataset.data_paths=["OUT_DIR/text_text_document"]'
tokenizer.tokenizer_type=HuggingFaceTokenizer tokenizer.tokenizer_model=OUT_DIR/tokenizer``.
Needs ``tokenizers``, ``transformers`` and megatron-core (the train extra).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sysconfig
from pathlib import Path

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
DOC_SUFFIXES = (".txt", ".md", ".rst")
MIN_CHARS = 400  # shorter files are mostly headers and lists of names
MIN_LETTER_SHARE = 0.6  # prose, not tables of numbers or code dumps


def default_roots() -> list[str]:
    """Where English prose lies on a Debian machine with Python, in a fixed order."""
    return ["/usr/share/common-licenses", "/usr/share/doc", "/usr/share/vim"]


def _is_document(path: Path) -> bool:
    """Licence texts, Debian copyright files and .txt/.md/.rst documents (gzipped or not)."""
    if not path.is_file() or path.is_symlink():
        return False
    name = path.name.removesuffix(".gz")
    return path.parent.name == "common-licenses" or name == "copyright" or name.endswith(DOC_SUFFIXES)


def _candidate_files(roots: list[str]) -> list[Path]:
    return [
        path
        for root in roots
        if os.path.isdir(root)
        for path in sorted(Path(root).rglob("*"))
        if _is_document(path)
    ]


def _read(path: Path) -> str | None:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return None


def _is_prose(text: str) -> bool:
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return len(text) >= MIN_CHARS and letters / len(text) >= MIN_LETTER_SHARE


def gather(roots: list[str], max_bytes: int, pydoc: bool = True) -> tuple[list[str], list[dict[str, str]]]:
    """Documents (deduplicated, in a fixed order, at most ``max_bytes`` of text) and where each came from."""
    documents: list[str] = []
    sources: list[dict[str, str]] = []
    seen: set[str] = set()
    total = 0

    def add(text: str, source: str) -> bool:
        nonlocal total
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest in seen or not _is_prose(text):
            return True
        if total + len(text.encode()) > max_bytes:
            return False
        seen.add(digest)
        documents.append(text)
        sources.append({"source": source, "sha256": digest})
        total += len(text.encode())
        return True

    if pydoc:
        from pydoc_data.topics import topics

        for name in sorted(topics):
            if not add(topics[name], f"python{sysconfig.get_python_version()}:pydoc_data.topics[{name!r}]"):
                return documents, sources
    for path in _candidate_files(roots):
        text = _read(path)
        if text is not None and not add(text, str(path)):
            break
    return documents, sources


def train_tokenizer(documents: list[str], directory: str, vocab_size: int) -> str:
    """A byte-level BPE with BOS/EOS as ids 0 and 1, saved as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer, length=len(documents))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS)
    fast.save_pretrained(directory)
    return directory


def build(
    out_dir: str,
    max_mb: float = 16.0,
    vocab_size: int = 32768,
    roots: list[str] | None = None,
    pydoc: bool = True,
    workers: int = 2,
) -> dict[str, object]:
    """Gather, train the tokenizer, tokenize; returns the manifest (also written to manifest.json)."""
    from dsv3_recipes.data.preprocess import preprocess
    from dsv3_recipes.mlperf.rules import idx_token_count

    documents, sources = gather(roots if roots is not None else default_roots(), int(max_mb * 2**20), pydoc)
    if not documents:
        raise ValueError(f"corpus: no English text found under {roots or default_roots()}")
    out = Path(out_dir)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    raw = out / "raw" / "text.json.gz"
    lines = "".join(json.dumps({"text": d}) + "\n" for d in documents).encode()
    raw.write_bytes(gzip.compress(lines, mtime=0))  # mtime 0: the same text gives the same bytes
    tokenizer = train_tokenizer(documents, str(out / "tokenizer"), vocab_size)
    prefix = preprocess([str(raw)], str(out / "text"), tokenizer, workers=workers)
    manifest = {
        "documents": len(documents),
        "bytes": sum(len(d.encode()) for d in documents),
        "tokens": idx_token_count(prefix + ".idx"),
        "vocab_size": vocab_size,
        "corpus_sha256": hashlib.sha256(lines).hexdigest(),
        "data_path": prefix,
        "tokenizer": tokenizer,
        "sources": sources,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def add_arguments(subparsers: argparse._SubParsersAction) -> None:
    """The `dsv3 corpus` subcommand."""
    p = subparsers.add_parser("corpus", help="an English benchmark corpus + BPE tokenizer, made offline")
    p.add_argument("out_dir")
    p.add_argument("--max-mb", type=float, default=16.0, help="text to gather, in MiB")
    p.add_argument("--vocab-size", type=int, default=32768)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenizer processes")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    manifest = build(args.out_dir, args.max_mb, args.vocab_size, workers=args.workers)
    print(
        f"corpus: {manifest['documents']} documents, {manifest['bytes'] / 2**20:.1f} MiB, "
        f"{manifest['tokens']:,} tokens -> {manifest['data_path']} (sha256 {manifest['corpus_sha256'][:12]})"
    )
    return 0
