"""Cost of a GN-FT step relative to plain fine-tuning, measured in one run (`make bench-gnft`).

For each model (the tiny Wav2Vec2 / HuBERT and a base-size Wav2Vec2 config, random init) and each mode
(FT = α 0, GN approx, GN exact), a child process runs `--steps` training steps on batches of 1 s clips
through `GNFTTrainer.training_step` and reports the median step time and the peak resident memory;
the parent prints the ratios to FT, and for the approx step the time beyond two FT passes (the
bookkeeping: stashing gradients, the perturbation, restoring θ and the RNG). On CPU the peak is the
process's resident memory (Python and torch included); on GPU, `torch.cuda.max_memory_allocated`.
Run it alone: other jobs on the same cores distort the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

BASE_WAV2VEC2 = {  # wav2vec2-base sizes (about 95M parameters), random init
    "model_type": "wav2vec2",
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "conv_dim": [512] * 7,
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "feat_extract_norm": "group",
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
}


def child(model_name: str, mode: str, batch_size: int, steps: int) -> dict:
    from hf_gnft.data import dataset_from_arrays
    from hf_gnft.defenses.gnft_config import GNFTConfig
    from hf_gnft.defenses.gnft_trainer import GNFTTrainer
    from hf_gnft.models import build_model
    from hf_gnft.training import AudioClassificationCollator

    torch.manual_seed(0)
    labels = [f"k{i}" for i in range(10)]
    if model_name == "base-wav2vec2":
        path = os.path.join(tempfile.mkdtemp(), "base-wav2vec2.json")
        with open(path, "w") as handle:
            json.dump(BASE_WAV2VEC2, handle)
        model_name = path
    model, extractor = build_model(model_name, labels)
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(16_000)).astype(np.float32) for _ in range(batch_size)]
    data = dataset_from_arrays(clips, [i % 10 for i in range(batch_size)], labels)
    args = GNFTConfig(
        output_dir=tempfile.mkdtemp(),
        gn_alpha=0.0 if mode == "ft" else 0.7,
        gn_mode="exact" if mode == "exact" else "approx",
        per_device_train_batch_size=batch_size,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        optim="sgd",
        learning_rate=1e-3,
    )
    trainer = GNFTTrainer(
        model=model, args=args, train_dataset=data, data_collator=AudioClassificationCollator(extractor)
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    trainer.current_gradient_accumulation_steps = 1  # set by train(); the steps here are driven by hand
    batch = AudioClassificationCollator(extractor)([data[i] for i in range(batch_size)])
    times = []
    for _ in range(steps + 2):  # two warm-up steps
        started = time.perf_counter()
        trainer.training_step(trainer.model, batch)
        trainer.optimizer.step()
        trainer.model.zero_grad()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    return {
        "step_s": statistics.median(times[2:]),
        "peak_mib": peak_mib,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def run_child(model: str, mode: str, batch_size: int, steps: int) -> dict:
    command = [sys.executable, __file__, "--child", model, mode, str(batch_size), str(steps)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["tiny-wav2vec2", "tiny-hubert", "base-wav2vec2"])
    parser.add_argument("--modes", nargs="+", default=["ft", "approx", "exact"])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--base_batch_size", type=int, default=4, help="batch for the base-size model on CPU")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, mode, batch_size, steps = args.child
        print(json.dumps(child(model, mode, int(batch_size), int(steps))))
        return
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    print(f"machine: {platform.machine()}, {device}, torch {torch.__version__}")
    print("| model | params | batch | mode | step s | x FT | peak MiB | x FT |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for model in args.models:
        batch = (
            args.base_batch_size
            if model == "base-wav2vec2" and not torch.cuda.is_available()
            else args.batch_size
        )
        reference = None
        for mode in args.modes:
            row = run_child(model, mode, batch, args.steps)
            reference = reference or row
            results.append({"model": model, "mode": mode, "batch": batch, **row})
            print(
                f"| {model} | {row['parameters'] / 1e6:.2f}M | {batch} | {mode} | {row['step_s']:.3f} "
                f"| {row['step_s'] / reference['step_s']:.2f} | {row['peak_mib']:.0f} "
                f"| {row['peak_mib'] / reference['peak_mib']:.2f} |",
                flush=True,
            )
    for model in args.models:
        by_mode = {row["mode"]: row for row in results if row["model"] == model}
        if "ft" in by_mode and "approx" in by_mode:
            extra = by_mode["approx"]["step_s"] - 2 * by_mode["ft"]["step_s"]
            print(f"{model}: approx step = 2 FT passes {extra:+.4f} s of bookkeeping per step")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
