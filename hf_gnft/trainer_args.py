"""`TrainingArguments` with defaults that suit keyword spotting on small audio classifiers."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .settings import check_numeric_settings

logger = logging.getLogger(__name__)


@dataclass
class KeywordTrainingArguments(TrainingArguments):
    """`TrainingArguments` whose defaults train a tiny keyword classifier in minutes on a CPU.

    Only the defaults differ from `TrainingArguments`: AdamW at 2e-3 with a cosine schedule and 10%
    warm-up, 15 epochs of batches of 32, no checkpoints, no reporting, and `remove_unused_columns=False`
    (the collator decodes the `audio` column, which the model's signature does not name). It adds
    `overwrite_output_dir`: the recipes refuse to replace a finished output folder without it.
    """

    output_dir: str | None = field(
        default=None, metadata={"help": "Where the model and its records are written."}
    )
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate."})
    num_train_epochs: float = field(default=15.0, metadata={"help": "Training epochs."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device."})
    per_device_eval_batch_size: int = field(
        default=64, metadata={"help": "Evaluation batch size per device."}
    )
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warm-up steps (a float < 1 is a fraction)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpointing strategy."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Loggers to report to."})
    logging_steps: float = field(default=25, metadata={"help": "Log every N steps."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep the `audio` column for the collator."}
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data-loading worker processes."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a finished output folder (once the new one is complete)."}
    )

    def __post_init__(self) -> None:
        check_numeric_settings(self)  # every number finite and in range, before TrainingArguments reads them
        super().__post_init__()


def as_config(
    args: TrainingArguments | None, config_class: type, default_output_dir: str
) -> TrainingArguments:
    """`args` as a `config_class` (a `TrainingArguments` subclass): kept if it already is one, else rebuilt
    from its fields with the subclass's own defaults (how the trainers accept plain `TrainingArguments`)."""
    if args is None:
        return config_class(output_dir=default_output_dir)
    if isinstance(args, config_class):
        return args
    logger.info("Got TrainingArguments: using %s defaults for the settings it adds", config_class.__name__)
    values = {key: value for key, value in args.to_dict().items() if not key.startswith("_")}
    values["hub_token"] = args.hub_token  # to_dict() redacts it
    return config_class(**values)


def is_main_process(args: TrainingArguments) -> bool:
    """Whether this process is the main one of a (possibly distributed) run. Reads `args.device` first, which
    sets up the distributed state: before that, `args.process_index` is 0 on every rank.

    Raises:
        ValueError: the launcher started several processes but the arguments set up no distributed run (on
            CPU, transformers needs `--use_cpu true` for that); each process would otherwise train alone and
            write the same output.
    """
    _ = args.device
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and args.world_size == 1:
        raise ValueError(
            f"launched as {launched} processes, but the run is not distributed; on CPU pass --use_cpu true "
            "(gloo), on GPUs check the launcher's configuration"
        )
    return args.process_index == 0
