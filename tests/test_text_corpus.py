"""`dsv3 corpus`: an offline English corpus and BPE tokenizer, the same bytes for the same sources."""

import gzip
import json

import pytest

pytest.importorskip("tokenizers", reason="needs the train extra")
pytest.importorskip("megatron.core", reason="needs the train extra")

from dsv3_recipes.data import text_corpus  # noqa: E402
from dsv3_recipes.mlperf.rules import idx_token_count  # noqa: E402

PROSE = "The river runs past the old mill, and the miller counts the sacks of grain each evening. " * 8


@pytest.fixture
def shipped_docs(tmp_path):
    root = tmp_path / "share"
    (root / "common-licenses").mkdir(parents=True)
    (root / "common-licenses" / "GPL-3").write_text(PROSE + "You may copy and share it.")
    (root / "doc" / "pkg").mkdir(parents=True)
    (root / "doc" / "pkg" / "copyright").write_text(PROSE + "Copyright the authors.")
    (root / "doc" / "pkg" / "README.md.gz").write_bytes(gzip.compress((PROSE + "Read me.").encode()))
    (root / "doc" / "pkg" / "dup.txt").write_text(PROSE + "You may copy and share it.")  # a duplicate
    (root / "doc" / "pkg" / "table.txt").write_text("1 2 3 4 5 6 7 8 9 0 | " * 40)  # not prose
    (root / "doc" / "pkg" / "image.png").write_bytes(b"\x89PNG" + bytes(600))
    return str(root)


def test_builds_corpus_tokenizer_and_indexed_data_with_a_manifest(shipped_docs, tmp_path):
    manifest = text_corpus.build(str(tmp_path / "out"), vocab_size=300, roots=[shipped_docs], pydoc=False)
    assert manifest["documents"] == 3  # the licence, the copyright file, the gzipped README
    assert [s["source"].rsplit("/", 1)[-1] for s in manifest["sources"]] == [
        "GPL-3",
        "README.md.gz",
        "copyright",
    ]
    assert manifest["tokens"] == idx_token_count(manifest["data_path"] + ".idx") > 0
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(manifest["tokenizer"])
    assert len(tok) == 300 and tok.eos_token == text_corpus.EOS and tok.bos_token_id == 0
    written = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert written["corpus_sha256"] == manifest["corpus_sha256"]


def test_same_sources_same_corpus(shipped_docs, tmp_path):
    a = text_corpus.build(str(tmp_path / "a"), vocab_size=300, roots=[shipped_docs], pydoc=False)
    b = text_corpus.build(str(tmp_path / "b"), vocab_size=300, roots=[shipped_docs], pydoc=False)
    assert a["corpus_sha256"] == b["corpus_sha256"] and a["tokens"] == b["tokens"]
    assert (tmp_path / "a/raw/text.json.gz").read_bytes() == (tmp_path / "b/raw/text.json.gz").read_bytes()


def test_the_size_cap_and_pydoc_topics(tmp_path):
    docs, sources = text_corpus.gather([], max_bytes=200_000)
    assert docs and all(s["source"].startswith("python3.12:pydoc_data.topics[") for s in sources)
    assert sum(len(d.encode()) for d in docs) <= 200_000


def test_nothing_to_gather_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"^corpus: no English text found under"):
        text_corpus.build(str(tmp_path / "out"), roots=[str(tmp_path / "empty")], pydoc=False)
