"""Stage-2 training speed of a LLaMo at the LLaMA-2-7B shape on one CUDA GPU: step time, tokens/s and model FLOPs
utilisation (MFU).

Random weights at LLaMA-2-7B's shape: the LM in bfloat16, the graph encoder and projector in float32 (as
`llamo.training.common.load_for_training` loads them for `dtype: bfloat16`). LoRA comes from stage 2's own
`lora_config` (r 8, alpha 32, dropout 0.05 on q_proj/v_proj, the projector trained in full, the GIN frozen with its
BatchNorm in eval mode). Each optimizer step does what stage 2's `LlamoSFTTrainer` does with the 7B recipe: bf16
autocast, gradient checkpointing (non-reentrant), gradient clipping at 1.0, AdamW (weight decay 0.05) and the paper's
warm-up + cosine schedule. The Trainer and the data pipeline are left out (the CPU benchmark measures those):
batches are synthetic, `--batch-size` rows of exactly `--seq-len` tokens (no padding), each a real molecule's graph
(its graph tokens) followed by random token ids, the first half masked from the loss.

    python benchmarks/bench_training_gpu.py --batch-size 8 --seq-len 512 --steps 20

MFU is model FLOPs per second over the GPU's peak (`--peak-tflops`, default 989: the H100 SXM's dense bf16 peak; the
H200 has the same). Model FLOPs per token, N being the LM's matmul weights (LoRA included) and the base frozen:
forward 2N + backward through the activations 2N + weight gradients of the trainable LoRA weights 2N_LoRA, plus
attention 12·L·d·s (PaLM's convention: causal masking not discounted). Recomputation by gradient checkpointing is not
model work; `hfu` counts it (one more forward). `mfu_6n` is the full fine-tuning convention, 6N per token, for
comparison with figures quoted that way. The graph encoder and projector (under 0.1 % of the FLOPs) are not counted.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
from common import parse_config, report, versions
from peft import get_peft_model
from transformers import LlamaConfig, get_scheduler

from llamo import LlamoConfig, LlamoForConditionalGeneration
from llamo.featurization_llamo import collate_molecule_graphs, featurize_smiles
from llamo.training.common import lora_config
from llamo.training.config import StageArguments, stage_arguments

LLAMA2_7B = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
}
MOLECULES = ("CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "OCC1OC(O)C(O)C(O)C1O", "c1ccc2ccccc2c1")
NO_CUDA = (
    "bench_training_gpu.py measures GPU training and needs CUDA, but torch.cuda.is_available() is False here "
    "(torch {version}). Run it on a machine with an NVIDIA GPU and a CUDA build of PyTorch; the CPU benchmark is "
    "benchmarks/bench_training.py."
)


@dataclass
class GpuBenchConfig:
    batch_size: int = 8
    seq_len: int = 512
    steps: int = field(default=20, metadata={"help": "timed optimizer steps"})
    warmup_steps: int = field(default=3, metadata={"help": "untimed steps first"})
    peak_tflops: float = field(default=989.0, metadata={"help": "the GPU's bf16 dense peak"})
    lora_r: int = 8
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    gradient_checkpointing: bool = field(
        default=True, metadata={"help": "recompute activations in the backward pass (off: keep them)"}
    )
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast"})
    output: str | None = field(default=None, metadata={"help": "also write the result as JSON here"})


def build_model(shape: dict, device: torch.device) -> LlamoForConditionalGeneration:
    """A random LLaMo around a Llama of `shape`, with `<graph>` and a pad token added to its vocabulary (as
    `build_llamo` does): the LM in bfloat16, the graph encoder and projector in float32."""
    text = LlamaConfig(**{**shape, "vocab_size": shape["vocab_size"] + 2}, bos_token_id=1, eos_token_id=2)
    config = LlamoConfig(text_config=text, graph_token_id=shape["vocab_size"])
    with torch.device(device):
        model = LlamoForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.model.graph_encoder.float()
    model.model.graph_projector.float()
    return model


def prepare_stage2(model: LlamoForConditionalGeneration, config: GpuBenchConfig):
    """Stage 2's setup: the GIN frozen, gradient checkpointing, LoRA + the projector trained (`stage2.lora_config`)."""
    model.freeze_graph_encoder()
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    stage = stage_arguments(
        "stage2",
        {
            "output_dir": "unused",
            "sources": [{"type": "conversations", "path": "unused"}],
            "lora_r": config.lora_r,
            "lora_target_modules": list(config.lora_target_modules),
        },
    )
    peft_model = get_peft_model(model, lora_config(model, stage.model))
    peft_model.train()
    return peft_model, stage


def synthetic_batch(model, batch_size: int, seq_len: int, device: torch.device, seed: int = 0) -> dict:
    """`batch_size` rows of `seq_len` tokens: BOS, the molecule's graph tokens, random text; loss on the second half."""
    config = model.config
    graph_tokens = config.num_graph_tokens
    if seq_len < graph_tokens + 4:
        raise ValueError(f"--seq-len must be at least {graph_tokens + 4} (the {graph_tokens} graph tokens + text)")
    generator = torch.Generator().manual_seed(seed)
    text_vocab = config.graph_token_id
    input_ids = torch.randint(3, text_vocab, (batch_size, seq_len), generator=generator)
    input_ids[:, 0] = 1
    input_ids[:, 1 : 1 + graph_tokens] = config.graph_token_id
    labels = input_ids.clone()
    labels[:, : seq_len // 2] = -100
    graphs = collate_molecule_graphs([featurize_smiles(MOLECULES[i % len(MOLECULES)]) for i in range(batch_size)])
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels, **graphs}
    return {name: tensor.to(device) for name, tensor in batch.items()}


def flops_per_token(model, seq_len: int, recompute: bool = True) -> dict[str, float]:
    """Model FLOPs per token of one training step (see the module docstring), and what they are made of; hardware
    FLOPs add the forward pass that gradient checkpointing (`recompute`) runs again."""
    text = model.config.text_config
    base, lora = 0, 0
    language_model = model.get_base_model().model.language_model
    for module in (*language_model.modules(), model.get_base_model().lm_head):
        if isinstance(module, torch.nn.Linear):
            count = module.weight.numel()
            if module.weight.requires_grad:
                lora += count
            else:
                base += count
    attention = 12 * text.num_hidden_layers * text.hidden_size * seq_len
    model_flops = 4 * (base + lora) + 2 * lora + attention
    forward = 2 * (base + lora) + attention / 3
    return {
        "frozen_matmul_parameters": base,
        "lora_parameters": lora,
        "model_flops_per_token": model_flops,
        "hardware_flops_per_token": model_flops + (forward if recompute else 0),
        "six_n_flops_per_token": 6 * (base + lora),
    }


def train_steps(model, stage: StageArguments, batch: dict, config: GpuBenchConfig, device: torch.device) -> list[float]:
    """Seconds of each timed optimizer step (after `config.warmup_steps` untimed ones), and checks the loss."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    args = stage.training
    optimizer = torch.optim.AdamW(
        trainable, lr=args.learning_rate, weight_decay=args.weight_decay, fused=device.type == "cuda"
    )
    total = config.warmup_steps + config.steps
    schedule = get_scheduler(  # the stage's own schedule, as its Trainer creates it
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.get_warmup_steps(total),
        num_training_steps=total,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    seconds = []
    for step in range(total):
        synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()
        if step >= config.warmup_steps:
            seconds.append(time.perf_counter() - start)
        if not torch.isfinite(loss):
            raise RuntimeError(f"the loss is {loss.item()} at step {step}")
    return seconds


def measure(config: GpuBenchConfig, device: torch.device, shape: dict = LLAMA2_7B) -> dict:
    torch.manual_seed(0)
    built = time.perf_counter()
    model, stage = prepare_stage2(build_model(shape, device), config)
    build_seconds = time.perf_counter() - built
    batch = synthetic_batch(model, config.batch_size, config.seq_len, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = train_steps(model, stage, batch, config, device)
    step = statistics.median(seconds)
    tokens = config.batch_size * config.seq_len
    flops = flops_per_token(model, config.seq_len, config.gradient_checkpointing)
    peak = config.peak_tflops * 1e12
    result = {
        "step_time_s_median": round(step, 4),
        "step_time_s_mean": round(statistics.fmean(seconds), 4),
        "tokens_per_s": round(tokens / step, 1),
        "samples_per_s": round(config.batch_size / step, 2),
        "model_tflops_per_s": round(flops["model_flops_per_token"] * tokens / step / 1e12, 1),
        "mfu": round(flops["model_flops_per_token"] * tokens / step / peak, 4),
        "hfu": round(flops["hardware_flops_per_token"] * tokens / step / peak, 4),
        "mfu_6n": round(flops["six_n_flops_per_token"] * tokens / step / peak, 4),
        "trainable_parameters_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 2),
        "model_build_s": round(build_seconds, 1),
        **flops,
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def main(config: GpuBenchConfig) -> dict:
    if not torch.cuda.is_available():
        raise SystemExit(NO_CUDA.format(version=torch.__version__))
    device = torch.device("cuda")
    result = {
        "model": "LLaMo at the LLaMA-2-7B shape, random weights, LM bf16, LoRA q/v + projector",
        "gpu": torch.cuda.get_device_name(device),
        **measure(config, device),
        **versions(),
    }
    return report(result, config)


if __name__ == "__main__":
    main(parse_config(GpuBenchConfig, __doc__))
