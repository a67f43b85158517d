"""MLPerf DSV3 data and evaluation schedule on the train side ([mlperf-dsv3] "Test data order").

Which validation sequences an evaluation reads is ``mlperf.eval_set``:

``"reference"`` (default): what the MLCommons reference code evaluates ([mlperf-ref]
pretrain_deepseek_v3_671b.py on Megatron-Bridge v0.3.0), and so what its convergence points were
made with. It builds a Megatron-Core GPTDataset over the validation file with the training seed,
sized for (train_iters // eval_interval + 1) x eval_iters x GBS samples (Bridge v0.3.0 sizes the
validation split with the training GBS: its eval_batch_size patch only changes ``evaluate``), so
documents and windows are seed-shuffled over many epochs; Bridge then reads it through its "cyclic"
``MegatronPretrainingRandomSampler`` (each data-parallel rank draws from its own bucket of the
dataset in ``torch.randperm(bucket, generator=manual_seed(epoch))`` order) from one iterator kept
for the whole run, so every evaluation sees the next 1,024 draws: a different random set each time.
``ReferenceEvalOrder`` serves that same sequence of samples through the sequential sampler Bridge
0.6.2 gives a dataset provider.

``"first"``: the benchmark README's wording, the first 1,024 sequences of the file, unshuffled.
``FirstSequences`` cuts the validation file's token stream in file order (documents with the EOD that
preprocessing appended) into the windows GPTDataset cuts from an unshuffled stream: sequence i is
tokens [i * seq_length, (i + 1) * seq_length + 1), inputs the first seq_length and labels shifted by
one. It serves sequence ``index % count``, so every evaluation reads sequences 0..count-1 once.

Training data is a shuffled GPTDataset blend in both, as in the reference.
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

from dsv3_recipes.mlperf import rules as mlperf_rules
from dsv3_recipes.recipe.resolve import Resolved


def first_tokens(dataset: IndexedDataset, count: int) -> numpy.ndarray:
    """The first ``count`` tokens of an indexed dataset's documents, concatenated in file order."""
    ends = numpy.cumsum(dataset.sequence_lengths, dtype=numpy.int64)
    if len(ends) == 0 or ends[-1] < count:
        found = int(ends[-1]) if len(ends) else 0
        raise ValueError(f"dataset.validation_paths: {found} tokens, {count} needed")
    needed = int(numpy.searchsorted(ends, count)) + 1
    return numpy.concatenate([dataset[i] for i in range(needed)])[:count].astype(numpy.int64)


class ReferenceEvalOrder(torch.utils.data.Dataset):
    """The validation samples in the order Bridge's cyclic random sampler draws them, for a sequential one.

    The random sampler gives data-parallel rank r its t-th sample from bucket
    ``[r * B, (r + 1) * B)`` at ``r * B + perm[t]`` (B = len // (mbs x dp) x mbs, perm =
    ``torch.randperm(B)`` seeded with epoch 0). The sequential sampler gives rank r, at its t-th
    sample, global position ``(t // mbs) * mbs * dp + r * mbs + t % mbs``; this view maps that
    position back to the random sampler's index.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, data_parallel_size: int, micro_batch_size: int):
        self.dataset = dataset
        self.dp, self.mbs = data_parallel_size, micro_batch_size
        self.bucket = (len(dataset) // (micro_batch_size * data_parallel_size)) * micro_batch_size
        self.order = torch.randperm(self.bucket, generator=torch.Generator().manual_seed(0)).tolist()

    def __len__(self) -> int:
        return self.bucket * self.dp

    def index(self, position: int) -> int:
        """The dataset index the reference reads at this position of the sequential sampler."""
        step, within = divmod(position, self.mbs * self.dp)
        rank, offset = divmod(within, self.mbs)
        return rank * self.bucket + self.order[step * self.mbs + offset]

    def __getitem__(self, position: int) -> dict:
        return self.dataset[self.index(position)]


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
    """A shuffled GPTDataset training blend and the validation sequences ``eval_set`` names."""

    seq_length: int
    train_paths: list[str]  # Megatron --data-path list, optionally weighted
    validation_prefix: str
    validation_sequences: int
    random_seed: int
    eval_set: str = "reference"
    reference_valid_samples: int = 0  # the reference's validation split size (eval_set "reference")
    data_parallel_size: int = 1
    micro_batch_size: int = 1
    path_to_cache: Optional[str] = None
    mmap_bin_files: bool = True

    def build_datasets(self, context: DatasetBuildContext) -> tuple[object, object, None]:
        reference = self.eval_set == "reference" and context.valid_samples
        valid_blend = get_blend_from_list([self.validation_prefix]) if reference else None
        train_config = GPTDatasetConfig(
            seq_length=self.seq_length,
            blend_per_split=[get_blend_from_list(self.train_paths), valid_blend, None],
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
        valid_samples = max(self.reference_valid_samples, context.valid_samples) if reference else 0
        train, valid, _ = BlendedMegatronDatasetBuilder(
            GPTDataset, [context.train_samples, valid_samples, 0], lambda: True, train_config
        ).build()
        if reference:
            valid = ReferenceEvalOrder(valid, self.data_parallel_size, self.micro_batch_size)
        elif context.valid_samples:
            valid = FirstSequences(
                self.validation_prefix,
                self.seq_length,
                self.validation_sequences,
                context.valid_samples,
                self.mmap_bin_files,
            )
        return train, valid, None


def configure(cfg: ConfigContainer, resolved: Resolved) -> None:
    """Evaluate every step from the ruleset's first step on, on the first ``eval_samples`` sequences."""
    recipe = resolved.recipe
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
        eval_set=ml.eval_set,
        # Bridge v0.3.0 sizes validation with the training GBS: (train_iters // interval + 1) x iters x GBS.
        # The draw is the reference's exactly when that covers every evaluation (GBS >= eval_samples, as
        # in every benchmark config); a proxy evaluating more sequences than its GBS gets the same
        # mechanism over the larger set Bridge 0.6.2 asks for.
        reference_valid_samples=(t.train_iters // t.eval_interval + 1) * t.eval_iters * t.global_batch_size,
        data_parallel_size=resolved.sizes.dp,
        micro_batch_size=t.micro_batch_size,
        path_to_cache=d.data_cache_path,
        mmap_bin_files=d.mmap_bin_files,
        dataloader_type="single",
        num_workers=d.num_workers,
    )
