"""GN-FT under DDP (torchrun, 2 CPU processes, gloo) equals the single-process reference."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from testing_utils import (
    Float64Collator,
    InOrderGNFT,
    config,
    flat,
    free_port,
    run_launcher,
    sine_dataset,
    tiny_model,
)

HERE = Path(__file__).resolve().parent


def test_two_process_ddp_matches_single_process_accumulation(tmp_path):
    output = tmp_path / "ddp.pt"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()),
        str(HERE / "ddp_gnft_script.py"), str(output), str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    code, stdout, stderr = run_launcher(command, env, timeout=240)  # a hung worker dumps its stack at 180 s
    assert code == 0, stdout[-2000:] + stderr[-6000:]
    ddp = torch.load(output)

    # Reference: one process, the two ranks' micro-batches as gradient accumulation (DDP averages them).
    data = sine_dataset(num_rows=16, seconds=0.4)
    model, extractor = tiny_model()
    args = config(
        tmp_path, "single", per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=2,
        learning_rate=0.5, gn_alpha=0.7,
    )  # fmt: skip
    InOrderGNFT(model=model, args=args, train_dataset=data, data_collator=Float64Collator(extractor)).train()
    torch.testing.assert_close(ddp, flat(model), rtol=0, atol=1e-10)
