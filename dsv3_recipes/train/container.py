"""Recipe -> Megatron-Bridge ConfigContainer (train side: imports torch, megatron and TE).

The model provider is Megatron-Bridge's own DeepSeek-V3 mapping (``DeepSeekV3Bridge.provider_bridge``)
applied offline to a Hugging Face config written from the recipe, not read from the Hub: Bridge 0.6.2's
``deepseek_v3_pretrain_config()`` downloads that config and fails offline.
"""

from __future__ import annotations

import dataclasses
import os

import torch
from megatron.bridge.models.conversion.auto_bridge import AutoBridge
from megatron.bridge.models.mla_provider import MLAModelProvider
from megatron.bridge.training.comm_overlap import CommOverlapConfig
from megatron.bridge.training.config import (
    CheckpointConfig,
    ConfigContainer,
    DistributedDataParallelConfig,
    DistributedInitConfig,
    GPTDatasetConfig,
    LoggerConfig,
    MockGPTDatasetConfig,
    OptimizerConfig,
    ProfilingConfig,
    RerunStateMachineConfig,
    RNGConfig,
    SchedulerConfig,
    TrainingConfig,
    ValidationConfig,
)
from megatron.bridge.training.mixed_precision import MixedPrecisionConfig
from megatron.bridge.training.tokenizers.config import TokenizerConfig
from megatron.core.datasets.utils import get_blend_from_list
from megatron.core.transformer.enums import AttnBackend
from transformers import DeepseekV3Config

from dsv3_recipes.recipe.resolve import DEFAULT_FLEX_BACKEND, Resolved
from dsv3_recipes.recipe.schema import ModelConfig, Recipe
from dsv3_recipes.train import mlperf_data

DEEPSEEK_V3_ARCHITECTURE = "DeepseekV3ForCausalLM"  # picks DeepSeekV3Bridge
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def hf_config(m: ModelConfig) -> DeepseekV3Config:
    """The recipe's architecture as DeepSeek-V3's Hugging Face config, in that config's names."""
    return DeepseekV3Config(
        architectures=[DEEPSEEK_V3_ARCHITECTURE],
        num_hidden_layers=m.num_layers,
        hidden_size=m.hidden_size,
        intermediate_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads,
        # MLA has no grouped keys: DeepSeek-V3's config.json sets both to 128, and HF defaults this one to
        # 128 whatever the head count, which Megatron refuses for a narrower model (heads % groups != 0).
        num_key_value_heads=m.num_attention_heads,
        q_lora_rank=m.q_lora_rank,
        kv_lora_rank=m.kv_lora_rank,
        qk_nope_head_dim=m.qk_head_dim,
        qk_rope_head_dim=m.qk_pos_emb_head_dim,
        v_head_dim=m.v_head_dim,
        n_routed_experts=m.num_moe_experts,
        moe_intermediate_size=m.moe_ffn_hidden_size,
        n_shared_experts=m.moe_shared_expert_intermediate_size // m.moe_ffn_hidden_size,
        first_k_dense_replace=m.first_k_dense_replace,
        num_experts_per_tok=m.moe_router_topk,
        n_group=m.moe_router_num_groups,
        topk_group=m.moe_router_group_topk,
        routed_scaling_factor=m.moe_router_topk_scaling_factor,
        vocab_size=m.vocab_size,
        max_position_embeddings=m.seq_length,  # Bridge's source of seq_length
        rms_norm_eps=m.norm_epsilon,
        initializer_range=m.init_method_std,
        attention_dropout=m.attention_dropout,
        num_nextn_predict_layers=m.mtp_num_layers or 0,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": m.rotary_base,
            "factor": m.rotary_scaling_factor,
            "original_max_position_embeddings": m.original_max_position_embeddings,
            "beta_fast": 32.0,  # DeepSeek-V3's config.json
            "beta_slow": 1.0,
            "mscale": m.mscale,
            "mscale_all_dim": m.mscale_all_dim,
        },
    )


def recipe_choices(resolved: Resolved) -> dict[str, object]:
    """The recipe's model fields as provider fields: they win over Bridge's. The recipe uses Megatron's
    names, so most pass as they are; the few below Megatron spells, types or gates differently, or
    derives (``Resolved``)."""
    m = resolved.recipe.model
    choices = dataclasses.asdict(m)
    del choices["first_k_dense_replace"], choices["norm_epsilon"]  # in the HF config, in Bridge's terms
    del choices["moe_counts_on_device"]  # train.grouped_gemm's, not Megatron's
    hybridep_num_sms = choices.pop("moe_hybridep_num_sms")  # deprecated in Megatron-Core 0.19
    choices.update(
        attention_backend=AttnBackend[m.attention_backend],
        sequence_parallel=resolved.sizes.sequence_parallel,  # off at TP1, as Megatron-LM turns it
        moe_shared_expert_overlap=resolved.shared_expert_overlap,
        # The provider holds a backend with any dispatcher; only the flex one reads it.
        moe_flex_dispatcher_backend=resolved.flex_backend or DEFAULT_FLEX_BACKEND,
        moe_flex_dispatcher_num_sms=hybridep_num_sms if m.moe_flex_dispatcher_backend == "hybridep" else None,
        cuda_graph_modules=choices.pop("cuda_graph_scope"),  # cuda_graph_scope is deprecated in 0.19
    )
    return choices


def model_provider(resolved: Resolved) -> MLAModelProvider:
    """Megatron-Bridge's DeepSeek-V3 provider (DeepSeekV3Bridge.provider_bridge, offline from a local
    config) for the recipe's architecture, with the recipe's own choices on top."""
    bridge = AutoBridge.from_hf_config(hf_config(resolved.recipe.model))
    provider = bridge.to_megatron_provider(load_weights=False)
    for name, value in recipe_choices(resolved).items():
        setattr(provider, name, value)
    return provider


def dataset_config(recipe: Recipe) -> GPTDatasetConfig:
    """Mock tokens, or an indexed blend (with an optional separate validation blend)."""
    d = recipe.dataset
    blend_per_split = None
    if d.validation_paths:
        blend_per_split = [get_blend_from_list(d.data_paths), get_blend_from_list(d.validation_paths), None]
    dataset_cls = MockGPTDatasetConfig if d.mock else GPTDatasetConfig
    return dataset_cls(
        random_seed=recipe.train.seed,
        seq_length=recipe.model.seq_length,
        data_path=None if d.mock or blend_per_split else list(d.data_paths),
        blend_per_split=blend_per_split,
        split=None if blend_per_split else d.split,
        path_to_cache=d.data_cache_path,
        mmap_bin_files=d.mmap_bin_files,
        num_workers=d.num_workers,
        create_attention_mask=d.create_attention_mask,
        skip_getting_attention_mask_from_dataset=not d.create_attention_mask,
        reset_attention_mask=False,
        reset_position_ids=False,
        eod_mask_loss=False,
        dataloader_type="single",
        data_sharding=True,
        num_dataset_builder_threads=1,
    )


def tokenizer_config(recipe: Recipe) -> TokenizerConfig:
    """The recipe's tokenizer; mock data has no text, so it runs with NullTokenizer and loads nothing."""
    tok = recipe.tokenizer
    if recipe.dataset.mock or tok.tokenizer_type == "NullTokenizer":
        return TokenizerConfig(tokenizer_type="NullTokenizer", vocab_size=recipe.model.vocab_size)
    return TokenizerConfig(tokenizer_type=tok.tokenizer_type, tokenizer_model=tok.tokenizer_model)


def to_config_container(resolved: Resolved) -> ConfigContainer:
    """Translate every section of the recipe (as ``validate`` resolved it) into its Megatron-Bridge config."""
    recipe = resolved.recipe
    m, t, o, s, mp, co = (
        recipe.model,
        recipe.train,
        recipe.optimizer,
        recipe.scheduler,
        recipe.mixed_precision,
        recipe.comm_overlap,
    )
    output_dir = os.path.abspath(recipe.output_dir)
    checkpoint_dir = recipe.checkpoint.save or os.path.join(output_dir, "checkpoints")
    tensorboard_dir = recipe.logger.tensorboard_dir or os.path.join(output_dir, "tensorboard")
    fp8 = mp.fp8_recipe is not None
    cfg = ConfigContainer(
        model=model_provider(resolved),
        train=TrainingConfig(
            micro_batch_size=t.micro_batch_size,
            global_batch_size=t.global_batch_size,
            train_iters=t.train_iters,
            train_samples=t.train_samples,
            exit_duration_in_mins=t.exit_duration_in_mins,
            manual_gc=t.manual_gc,
            # Bridge collects only generation 2; any other is collected by train.callbacks.GarbageCollection.
            manual_gc_interval=t.manual_gc_interval if t.manual_gc_generation == 2 else 0,
        ),
        validation=ValidationConfig(eval_interval=t.eval_interval, eval_iters=t.eval_iters),
        optimizer=OptimizerConfig(
            optimizer=o.optimizer,
            lr=o.lr,
            min_lr=o.min_lr,
            weight_decay=o.weight_decay,
            adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2,
            adam_eps=o.adam_eps,
            clip_grad=o.clip_grad,
            bf16=mp.bf16,
            params_dtype=torch.bfloat16 if mp.bf16 else torch.float32,
            use_distributed_optimizer=o.use_distributed_optimizer,
            use_precision_aware_optimizer=o.use_precision_aware_optimizer,
            main_grads_dtype=DTYPES[o.main_grads_dtype],
            main_params_dtype=DTYPES[o.main_params_dtype],
            exp_avg_dtype=DTYPES[o.exp_avg_dtype],
            exp_avg_sq_dtype=DTYPES[o.exp_avg_sq_dtype],
            reuse_grad_buf_for_mxfp8_param_ag=mp.reuse_grad_buf_for_mxfp8_param_ag,
        ),
        scheduler=SchedulerConfig(
            lr_decay_style=s.lr_decay_style,
            lr_wsd_decay_style=s.lr_wsd_decay_style,
            lr_wsd_decay_iters=s.lr_wsd_decay_iters,
            lr_warmup_iters=s.lr_warmup_iters,
            lr_warmup_init=s.lr_warmup_init,
            lr_decay_iters=s.lr_decay_iters,
            lr_warmup_samples=s.lr_warmup_samples,
            lr_decay_samples=s.lr_decay_samples,
            start_weight_decay=o.weight_decay,
            end_weight_decay=o.weight_decay,
            override_opt_param_scheduler=s.override_opt_param_scheduler,
            use_checkpoint_opt_param_scheduler=s.use_checkpoint_opt_param_scheduler,
        ),
        ddp=DistributedDataParallelConfig(
            check_for_nan_in_grad=t.check_for_nan_in_loss_and_grad,
            grad_reduce_in_fp32=mp.grad_reduce_in_fp32,
            overlap_grad_reduce=co.overlap_grad_reduce,
            overlap_param_gather=co.overlap_param_gather,
            use_distributed_optimizer=o.use_distributed_optimizer,
            fp8_param_gather=mp.fp8_param_gather,
            reuse_grad_buf_for_mxfp8_param_ag=mp.reuse_grad_buf_for_mxfp8_param_ag,
            average_in_collective=True,
            data_parallel_sharding_strategy="no_shard",
        ),
        comm_overlap=CommOverlapConfig(
            tp_comm_overlap=co.tp_comm_overlap,
            overlap_grad_reduce=co.overlap_grad_reduce,
            overlap_param_gather=co.overlap_param_gather,
            overlap_moe_expert_parallel_comm=co.overlap_moe_expert_parallel_comm,
            delay_wgrad_compute=co.delay_wgrad_compute,
        ),
        mixed_precision=MixedPrecisionConfig(
            bf16=mp.bf16,
            params_dtype=torch.bfloat16 if mp.bf16 else torch.float32,
            pipeline_dtype=torch.bfloat16 if mp.bf16 else torch.float32,
            autocast_enabled=False,
            grad_reduce_in_fp32=mp.grad_reduce_in_fp32,
            fp8="e4m3" if mp.fp8_format == "e4m3" and fp8 else ("hybrid" if fp8 else None),
            # None without FP8: Bridge's default "tensorwise" reaches the OptimizerConfig and turns the
            # precision-aware optimizer's fused master-weight path off (~2,000 per-param copies a step).
            fp8_recipe=mp.fp8_recipe,
            fp8_param_gather=mp.fp8_param_gather,
            reuse_grad_buf_for_mxfp8_param_ag=mp.reuse_grad_buf_for_mxfp8_param_ag,
        ),
        dataset=dataset_config(recipe),
        tokenizer=tokenizer_config(recipe),
        checkpoint=CheckpointConfig(
            save=checkpoint_dir if recipe.checkpoint.save_interval else recipe.checkpoint.save,
            load=recipe.checkpoint.load,
            pretrained_checkpoint=recipe.checkpoint.pretrained_checkpoint,
            save_interval=recipe.checkpoint.save_interval,
            save_optim=recipe.checkpoint.save_optim,
            load_optim=recipe.checkpoint.load_optim,
            load_rng=recipe.checkpoint.load_rng,
            async_save=recipe.checkpoint.async_save,
            dist_ckpt_strictness=recipe.checkpoint.dist_ckpt_strictness,
            ckpt_format="torch_dist",
        ),
        logger=LoggerConfig(
            log_interval=recipe.logger.log_interval,
            log_throughput=recipe.logger.log_throughput,
            tensorboard_dir=tensorboard_dir,
            log_timers_to_tensorboard=recipe.logger.log_timers_to_tensorboard,
            log_memory_to_tensorboard=recipe.logger.log_memory_to_tensorboard,
            log_validation_ppl_to_tensorboard=recipe.logger.log_validation_ppl_to_tensorboard,
            wandb_project=recipe.logger.wandb_project,
            wandb_exp_name=recipe.logger.wandb_exp_name,
            wandb_save_dir=os.path.join(output_dir, "wandb") if recipe.logger.wandb_project else None,
            logging_level=recipe.logger.logging_level,
        ),
        dist=DistributedInitConfig(
            distributed_timeout_minutes=t.distributed_timeout_minutes,
            enable_megatron_core_experimental=t.enable_experimental or m.apply_rope_fusion,
        ),
        rng=RNGConfig(seed=t.seed, te_rng_tracker=m.use_te_rng_tracker),
        # Megatron's --no-check-for-nan-in-loss-and-grad turns off both checks: the loss one lives in
        # Bridge's rerun state machine, the gradient one on the DDP config above.
        rerun_state_machine=RerunStateMachineConfig(check_for_nan_in_loss=t.check_for_nan_in_loss_and_grad),
        profiling=ProfilingConfig(
            use_pytorch_profiler=recipe.profiling.use_pytorch_profiler,
            use_nsys_profiler=recipe.profiling.use_nsys_profiler,
            profile_step_start=recipe.profiling.profile_step_start,
            profile_step_end=recipe.profiling.profile_step_end,
            profile_ranks=list(recipe.profiling.profile_ranks),
        ),
        env_vars=dict(recipe.run_env_vars),
    )
    if t.deterministic:
        from megatron.bridge.recipes.utils.determinism_utils import apply_determinism_overrides

        apply_determinism_overrides(cfg)  # deterministic_mode, no fused cross entropy, and the env
    if recipe.mlperf.enabled:
        mlperf_data.configure(cfg, resolved)
    return cfg
