"""`dsv3 preprocess` and the MLPerf validation data: small json.gz shards and a word-level tokenizer
made here, tokenized by the multiprocess preprocessor, read back with Megatron-Core's IndexedDataset,
and the first validation sequences served unshuffled through Megatron-Bridge's dataset provider."""

import argparse
import gzip
import json
import os
import sys

import pytest

pytest.importorskip("megatron.bridge", reason="needs the train extra")

import torch  # noqa: E402
from megatron.core.datasets.indexed_dataset import IndexedDataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from dsv3_recipes.data import preprocess, proxy_data  # noqa: E402
from dsv3_recipes.launch.submit import recipe_of  # noqa: E402
from dsv3_recipes.mlperf import rules as mlperf_rules
from dsv3_recipes.recipe.resolve import resolve  # noqa: E402
from dsv3_recipes.recipe.schema import RecipeError  # noqa: E402
from dsv3_recipes.recipes.mlperf import mlperf_gb300_256gpu, mlperf_proxy_1gpu  # noqa: E402
from dsv3_recipes.train.mlperf_data import FirstSequences, MLPerfC4Data  # noqa: E402

TRAIN = "c4-train.en_0"
VALID = "c4-validation-91205-samples.en"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Tokenizer and raw shards, then both datasets preprocessed with two worker processes."""
    root = tmp_path_factory.mktemp("c4")
    paths = proxy_data.write_corpus(str(root), train_documents=50, validation_documents=200)
    paths["train"] = preprocess.preprocess(
        [str(root / "raw" / "c4-train.*.json.gz")], str(root / TRAIN), paths["tokenizer"], workers=2
    )
    paths["valid"] = preprocess.preprocess(
        [paths["validation"]], str(root / VALID), paths["tokenizer"], workers=2, batch_size=7
    )
    paths["root"] = str(root)
    return paths


def documents(*shards):
    texts = []
    for shard in shards:
        with gzip.open(shard, "rt") as f:
            texts += [json.loads(line)["text"] for line in f]
    return texts


def encoded(corpus, texts):
    """What preprocessing must write: each text's ids without special tokens, then EOS."""
    tokenizer = AutoTokenizer.from_pretrained(corpus["tokenizer"])
    return [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]


def test_preprocess_writes_every_document_with_eod_in_input_order(corpus):
    texts = documents(*(corpus[name] for name in proxy_data.TRAIN_SHARDS))
    expected = encoded(corpus, texts)
    dataset = IndexedDataset(corpus["train"])
    assert corpus["train"].endswith("c4-train.en_0_text_document")
    assert len(dataset) == len(texts) == 100
    assert [dataset[i].tolist() for i in range(len(dataset))] == expected
    unk = AutoTokenizer.from_pretrained(corpus["tokenizer"]).unk_token_id
    assert all(unk not in doc for doc in expected)  # the generated text is in the tokenizer's vocabulary
    assert dataset[0].dtype.name == "uint16"  # Megatron's optimal dtype for a 28-word vocabulary


def test_launch_side_token_count_reads_megatrons_index(corpus):
    dataset = IndexedDataset(corpus["valid"])
    assert mlperf_rules.idx_token_count(corpus["valid"] + ".idx") == int(dataset.sequence_lengths.sum())


def test_first_sequences_are_the_file_order_windows_repeated(corpus):
    stream = [token for doc in encoded(corpus, documents(corpus["validation"])) for token in doc]
    sequences = FirstSequences(corpus["valid"], seq_length=64, count=16, length=40)
    assert len(sequences) == 40
    for index in range(40):
        start = (index % 16) * 64
        sample = sequences[index]
        assert sample["tokens"].tolist() == stream[start : start + 64]
        assert sample["labels"].tolist() == stream[start + 1 : start + 65]
        assert sample["loss_mask"].sum() == 64 and sample["position_ids"].tolist() == list(range(64))


def test_first_sequences_refuse_a_validation_file_that_is_too_short(corpus):
    with pytest.raises(ValueError, match="4194305 needed"):
        FirstSequences(corpus["valid"], seq_length=4096, count=1024, length=1024)


def proxy_on_corpus(corpus, cache):
    """mlperf_proxy_1gpu on the generated C4-style data; 8 evaluation sequences fit its validation file."""
    task = mlperf_proxy_1gpu()
    r = task.recipe
    r.dataset.mock = False
    r.dataset.data_paths = [corpus["train"]]
    r.dataset.validation_paths = [corpus["valid"]]
    r.dataset.data_cache_path = str(cache)
    r.tokenizer.tokenizer_type = "HuggingFaceTokenizer"
    r.tokenizer.tokenizer_model = corpus["tokenizer"]
    r.mlperf.eval_samples = 8
    return task


def test_mlperf_container_evaluates_the_first_sequences_every_step(corpus, monkeypatch, tmp_path):
    from megatron.bridge.data.loaders import get_train_valid_test_num_samples
    from megatron.bridge.data.utils import get_dataset_provider
    from megatron.bridge.training.config import runtime_config_update
    from megatron.bridge.training.tokenizers.tokenizer import build_tokenizer

    from dsv3_recipes.train.container import to_config_container

    task = proxy_on_corpus(corpus, tmp_path / "index_cache")
    r = task.recipe
    r.mlperf.eval_set = "first"  # the README's wording; the reference's own draw is tested below
    recipe = recipe_of(task)
    monkeypatch.setenv("WORLD_SIZE", "1")
    cfg = to_config_container(resolve(recipe))
    runtime_config_update(cfg)
    v = cfg.validation
    assert (v.eval_interval, v.eval_iters, v.eval_global_batch_size, v.start_eval_at_iter) == (1, 1, 8, 4)
    assert isinstance(cfg.dataset, MLPerfC4Data) and cfg.dataset.dataloader_type == "single"

    samples = get_train_valid_test_num_samples(cfg)
    provider = get_dataset_provider(cfg.dataset)
    train, valid, test = provider(list(samples), cfg.dataset, tokenizer=build_tokenizer(cfg.tokenizer))
    assert len(train) >= samples[0] and len(valid) == samples[1] and test is None
    first = FirstSequences(corpus["valid"], seq_length=4096, count=8, length=8)
    for index in (0, 7, 8, 8 * 30 + 3):  # every evaluation reads sequences 0..7 again
        assert valid[index]["tokens"].equal(first[index % 8]["tokens"])


def test_reference_eval_set_reads_what_the_reference_reads(corpus, monkeypatch, tmp_path):
    """``eval_set="reference"`` serves, through Bridge 0.6.2's sequential sampler, the samples the
    MLCommons reference evaluates: its GPTDataset over the validation file (seed-shuffled, sized with the
    training GBS as Bridge v0.3.0 does) read by Bridge's cyclic random sampler on each DP rank."""
    from megatron.bridge.data.loaders import get_train_valid_test_num_samples
    from megatron.bridge.data.samplers import MegatronPretrainingRandomSampler, MegatronPretrainingSampler
    from megatron.bridge.data.utils import get_dataset_provider
    from megatron.bridge.training.config import runtime_config_update
    from megatron.bridge.training.tokenizers.tokenizer import build_tokenizer
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.utils import get_blend_from_list

    from dsv3_recipes.train.container import to_config_container
    from dsv3_recipes.train.mlperf_data import ReferenceEvalOrder

    task = proxy_on_corpus(corpus, tmp_path / "ours")
    r = task.recipe
    r.launch.gpus_per_node = 2  # two data-parallel ranks: the draw depends on the rank's bucket
    r.train.micro_batch_size = 1
    recipe = recipe_of(task)
    assert recipe.mlperf.eval_set == "reference"  # the default
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = to_config_container(resolve(recipe))
    runtime_config_update(cfg)
    tokenizer = build_tokenizer(cfg.tokenizer)
    samples = get_train_valid_test_num_samples(cfg)
    _, valid, _ = get_dataset_provider(cfg.dataset)(list(samples), cfg.dataset, tokenizer=tokenizer)
    assert isinstance(valid, ReferenceEvalOrder) and len(valid) >= samples[1]

    # The reference, built independently: its GPTDataset config and Bridge's random sampler.
    t = recipe.train
    reference_size = (t.train_iters // t.eval_interval + 1) * t.eval_iters * t.global_batch_size
    config = GPTDatasetConfig(
        random_seed=t.seed,
        sequence_length=recipe.model.seq_length,
        blend_per_split=[None, get_blend_from_list([corpus["valid"]]), None],
        path_to_cache=str(tmp_path / "reference"),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        tokenizer=tokenizer,
    )
    builder = BlendedMegatronDatasetBuilder(GPTDataset, [0, reference_size, 0], lambda: True, config)
    _, reference, _ = builder.build()
    evaluations, per_rank = 3, recipe.mlperf.eval_samples // 2
    for rank in range(2):
        drawn = iter(MegatronPretrainingRandomSampler(reference, len(reference), 0, 1, rank, 2, True))
        ours = iter(MegatronPretrainingSampler(len(valid), 0, 1, rank, 2))
        for _ in range(evaluations * per_rank):
            (expected,), (position,) = next(drawn), next(ours)
            assert valid[position]["tokens"].equal(torch.as_tensor(reference[expected]["tokens"]))
    # A fresh random set each evaluation, not the file's first sequences.
    first = [valid[p]["tokens"] for p in range(recipe.mlperf.eval_samples)]
    second = [valid[p]["tokens"] for p in range(recipe.mlperf.eval_samples, 2 * recipe.mlperf.eval_samples)]
    assert any(not a.equal(b) for a, b in zip(first, second, strict=True))


@pytest.fixture
def stdin_devnull(monkeypatch):
    """NeMo-Run's Slurm dry run shells out through invoke, which mirrors stdin: pytest forbids reading it."""
    with open(os.devnull) as devnull:
        monkeypatch.setattr(sys, "stdin", devnull)
        yield


def test_benchmark_container_follows_the_rules(monkeypatch):
    from megatron.bridge.training.config import runtime_config_update

    from dsv3_recipes.train.container import to_config_container

    task = mlperf_gb300_256gpu()
    train, valid = "/data/c4-train.en_6_text_document", "/data/c4-validation-91205-samples.en_text_document"
    task.recipe.dataset.data_paths = [train]
    task.recipe.dataset.validation_paths = [valid]
    monkeypatch.setenv("WORLD_SIZE", "256")
    cfg = to_config_container(resolve(recipe_of(task)))
    runtime_config_update(cfg)
    v, s, o = cfg.validation, cfg.scheduler, cfg.optimizer
    assert (v.eval_interval, v.eval_global_batch_size, v.eval_micro_batch_size) == (1, 1024, 1)
    assert v.start_eval_at_iter == 43 and cfg.data_parallel_size == 64
    assert (s.lr_warmup_iters, s.lr_decay_iters, s.lr_decay_style) == (4, 11996, "cosine")
    assert (o.lr, o.min_lr, o.adam_eps, o.weight_decay) == (0.000024, 1e-8, 1e-8, 0.1)
    assert cfg.model.moe_aux_loss_coeff == 0.01 and not cfg.model.moe_router_force_load_balancing
    d = cfg.dataset
    assert (d.train_paths, d.validation_prefix, d.validation_sequences) == ([train], valid, 1024)


def cli(argv):
    parser = argparse.ArgumentParser(prog="dsv3")
    preprocess.add_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["preprocess", *argv])
    return args.func(args)


def test_cli_dryrun_renders_local_and_slurm_launches(corpus, capsys, monkeypatch, stdin_devnull):
    monkeypatch.delenv("RUN_CONF_IMAGE", raising=False)
    shards = corpus["root"] + "/raw/c4-train.*.json.gz"
    base = ["-i", shards, "-o", "/data/c4-train.en_0", "--tokenizer", corpus["tokenizer"], "--workers", "3"]
    assert cli([*base, "--dryrun"]) == 0
    local, task = capsys.readouterr()  # the launch on stdout, the task on stderr
    assert f"inputs=['{shards}']" in task and "workers=3" in task
    assert "nemo_run.core.runners.fdl_runner" in local and "torchrun" not in local

    slurm = ["--executor", "slurm", "--account", "acct", "--container-mounts", "/raw:/raw,/data:/data"]
    assert cli([*base, *slurm, "--container-image", "reg.example.com/t/dsv3:h100", "--dryrun"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --nodes=1" in script and "#SBATCH --ntasks-per-node=1" in script
    assert "--container-image reg.example.com/t/dsv3:h100" in script and "/raw:/raw,/data:/data" in script
    assert "export TOKENIZERS_PARALLELISM=false" in script


def test_cli_refuses_bad_input_before_launch(corpus, monkeypatch):
    monkeypatch.delenv("RUN_CONF_IMAGE", raising=False)
    base = ["-o", "/data/x", "--tokenizer", corpus["tokenizer"], "--dryrun"]
    with pytest.raises(ValueError, match="matches no file"):
        cli(["-i", corpus["root"] + "/raw/c4-nothing-*.json.gz", *base])
    with pytest.raises(RecipeError, match="--tokenizer"):
        cli(["-i", corpus["validation"], "-o", "/data/x", "--tokenizer", corpus["root"], "--dryrun"])
    with pytest.raises(RecipeError, match="--container-image"):
        cli(["-i", "/raw/x.json.gz", *base, "--executor", "slurm", "--account", "acct"])
    with pytest.raises(RecipeError, match="--workers"):
        cli(["-i", corpus["validation"], *base, "--workers", "0"])
