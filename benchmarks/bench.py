"""Throughput benchmarks of the data pipeline (run alone: `make bench`).

Prints clips per second for rendering the synthetic corpus (1 and 2 processes) and for poisoning
with each built-in trigger, and the machine they ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch

from hf_gnft.data.synthetic import SyntheticKeywordsConfig, render_split
from hf_gnft.poison import poison_dataset
from hf_gnft.triggers import PBSM, NoiseBurst, StyleTrigger, Tone


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, torch {torch.__version__}"
    )


def bench_rendering(num_clips: int, num_proc: int | None) -> float:
    config = SyntheticKeywordsConfig(train_size=num_clips, validation_size=0, test_size=0, seed=123)
    started = time.perf_counter()
    render_split(config, "train", num_proc=num_proc)
    return num_clips / (time.perf_counter() - started)


def bench_poisoning(num_clips: int) -> dict[str, float]:
    config = SyntheticKeywordsConfig(train_size=num_clips, validation_size=0, test_size=0, seed=321)
    dataset = render_split(config, "train")
    rates = {}
    for trigger in (NoiseBurst(), Tone(), PBSM(), StyleTrigger.preset("pitch_distortion_chorus")):
        started = time.perf_counter()
        poison_dataset(dataset, trigger, rate=0.5, target_label="yes")
        rates[trigger.name] = int(round(0.5 * num_clips)) / (time.perf_counter() - started)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=2000, help="clips to render per measurement")
    args = parser.parse_args()
    os.environ.setdefault("HF_GNFT_CACHE", tempfile.mkdtemp())
    results = {"machine": machine(), "render_clips_per_s": {}, "poison_clips_per_s": {}}
    for num_proc in (None, 2):
        rate = bench_rendering(args.clips, num_proc)
        results["render_clips_per_s"][str(num_proc or 1)] = round(rate, 1)
        print(f"render synthetic corpus, {num_proc or 1} process(es): {rate:8.1f} clips/s")
    for name, rate in bench_poisoning(min(args.clips, 500)).items():
        results["poison_clips_per_s"][name] = round(rate, 1)
        print(f"poison with {name:12s}: {rate:8.1f} clips/s")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
