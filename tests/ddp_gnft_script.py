"""Run by test_gnft_ddp.py under `torchrun --nproc_per_node 2` (CPU, gloo): a few GN-FT steps with DDP."""

from __future__ import annotations

import faulthandler
import sys
from pathlib import Path

import torch
from testing_utils import Float64Collator, InOrderGNFT, config, flat, sine_dataset, tiny_model

HANG_AFTER_S = 180


def main(output: str, workdir: str) -> None:
    # A worker stuck in a collective prints every thread's stack and exits before the test's time-out,
    # so a hang names its place in the log instead of an empty one.
    faulthandler.dump_traceback_later(HANG_AFTER_S, exit=True)
    data = sine_dataset(num_rows=16, seconds=0.4)
    model, extractor = tiny_model()
    args = config(
        Path(workdir), "ddp", per_device_train_batch_size=2, max_steps=2, learning_rate=0.5, gn_alpha=0.7
    )
    trainer = InOrderGNFT(
        model=model, args=args, train_dataset=data, data_collator=Float64Collator(extractor)
    )
    assert trainer.args.world_size == 2, trainer.args.world_size
    trainer.train()
    if trainer.args.process_index == 0:
        torch.save(flat(trainer.accelerator.unwrap_model(trainer.model)), output)
    trainer.accelerator.wait_for_everyone()
    # An explicit shutdown: leaving gloo's threads to process exit can abort ("terminate called ...").
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
