"""MLPerf DSV3 data and evaluation schedule on the train side (seed 002, "Test data order").

The benchmark evaluates after every step on the first 1,024 sequences of the validation file, not
shuffled. Megatron-Core's GPTDataset cannot give that: it shuffles documents and samples, and asked
by Megatron-Bridge 0.6.2 for (train_iters + 1) x 1,024 validation samples it builds many shuffled
epochs, from which Bridge's validation sampler draws at random ("cyclic"). Each evaluation would see
a different random multiset of windows. ``FirstSequences`` cuts the validation file's token stream in
file order (documents with the EOD that preprocessing appended) into the windows GPTDataset cuts from
an unshuffled stream: sequence i is tokens [i * seq_length, (i + 1) * seq_length + 1), inputs the
first seq_length and labels shifted by one. It serves sequence ``index % count``, and the provider
keeps Bridge's sequential ("single") sampler, so every evaluation reads sequences 0..count-1 once.
Training data stays a shuffled GPTDataset blend, as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy
import torch
from megatron.bridge.data.base import DatasetBuildContext, DatasetProvider
from megatron.bridge.training.config import ConfigContainer, GPTDatasetConfig, ValidationConfig
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.utils import get_blend_from_list

from dsv3_recipes import mlperf_rules
from dsv3_recipes.recipe import Recipe


def first_tokens(dataset: IndexedDataset, count: int) -> numpy.ndarray:
    """The first ``count`` tokens of an indexed dataset's documents, concatenated in file order."""
    ends = numpy.cumsum(dataset.sequence_lengths, dtype=numpy.int64)
    if len(ends) == 0 or ends[-1] < count:
        found = int(ends[-1]) if len(ends) else 0
        raise ValueError(f"dataset.validation_paths: {found} tokens, {count} needed")
    needed = int(numpy.searchsorted(ends, count)) + 1
    return numpy.concatenate([dataset[i] for i in range(needed)])[:count].astype(numpy.int64)


class FirstSequences(torch.utils.data.Dataset):
    """The first ``count`` sequences of a validation file, unshuffled, repeated to ``length`` samples."""

    def __init__(self, prefix: str, seq_length: int, count: int, length: int, mmap: bool = True):
        stream = first_tokens(IndexedDataset(prefix, mmap=mmap), count * seq_length + 1)
        self.tokens = torch.from_numpy(stream)
        self.seq_length = seq_length
        self.count = count
        self.length = length
        self.position_ids = torch.arange(seq_length, dtype=torch.long)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = (index % self.count) * self.seq_length
        window = self.tokens[start : start + self.seq_length + 1]
        return {
            "tokens": window[:-1].clone(),
            "labels": window[1:].clone(),
            "loss_mask": torch.ones(self.seq_length, dtype=torch.float),
            "position_ids": self.position_ids.clone(),
        }


@dataclass(kw_only=True)
class MLPerfC4Data(DatasetProvider):
    """A shuffled GPTDataset training blend and the unshuffled first validation sequences."""

    seq_length: int
    train_paths: list[str]  # Megatron --data-path list, optionally weighted
    validation_prefix: str
    validation_sequences: int
    random_seed: int
    path_to_cache: Optional[str] = None
    mmap_bin_files: bool = True

    def build_datasets(self, context: DatasetBuildContext) -> tuple[object, object, None]:
        train_config = GPTDatasetConfig(
            seq_length=self.seq_length,
            blend_per_split=[get_blend_from_list(self.train_paths), None, None],
            split=None,
            random_seed=self.random_seed,
            path_to_cache=self.path_to_cache,
            mmap_bin_files=self.mmap_bin_files,
            reset_position_ids=False,
            reset_attention_mask=False,
            eod_mask_loss=False,
            create_attention_mask=False,
        )
        train_config.tokenizer = context.tokenizer
        train_config.finalize()
        train, _, _ = BlendedMegatronDatasetBuilder(
            GPTDataset, [context.train_samples, 0, 0], lambda: True, train_config
        ).build()
        valid = None
        if context.valid_samples:
            valid = FirstSequences(
                self.validation_prefix,
                self.seq_length,
                self.validation_sequences,
                context.valid_samples,
                self.mmap_bin_files,
            )
        return train, valid, None


def configure(cfg: ConfigContainer, recipe: Recipe) -> None:
    """Evaluate every step from the ruleset's first step on, on the first ``eval_samples`` sequences."""
    t, d, ml = recipe.train, recipe.dataset, recipe.mlperf
    cfg.validation = ValidationConfig(
        eval_interval=t.eval_interval,
        eval_iters=t.eval_iters,
        eval_global_batch_size=ml.eval_samples // t.eval_iters,
        eval_micro_batch_size=t.micro_batch_size,
        start_eval_at_iter=mlperf_rules.start_eval_step(recipe),
    )
    if d.mock:
        return
    if len(d.validation_paths) != 1:
        raise ValueError("dataset.validation_paths: MLPerf evaluates on one validation prefix")
    cfg.dataset = MLPerfC4Data(
        seq_length=recipe.model.seq_length,
        train_paths=list(d.data_paths),
        validation_prefix=d.validation_paths[0],
        validation_sequences=ml.eval_samples,
        random_seed=t.seed,
        path_to_cache=d.data_cache_path,
        mmap_bin_files=d.mmap_bin_files,
        dataloader_type="single",
        num_workers=d.num_workers,
    )
