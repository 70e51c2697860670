"""Push a finished hf-gnft output folder (a cleaned model with its card and metrics) to the Hub, or retry a
push that failed at the end of `hf-gnft defend`.

    hf-gnft push --folder outputs/gnft --hub_model_id me/kws-clean [--hub_private_repo true]
    hf-gnft push --folder outputs/gnft --hub_dry_run true     # list the files, upload nothing

Uploads the model (safetensors), config, feature extractor, `README.md` card and the metrics JSON; never
checkpoints or pickles. The token comes from `HF_TOKEN` or the stored login and is never printed.
`HF_ENDPOINT` selects another Hub endpoint. `python recipes/push.py` takes the same arguments.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from hf_gnft.cli import parse_recipe_args
from hf_gnft.hub import push_output_dir


@dataclass
class PushArguments:
    """What to push, and where.

    Args:
        folder: a finished output folder of `hf-gnft defend`.
        hub_model_id: the Hub repo, `NAMESPACE/NAME` (created if it does not exist).
        hub_private_repo: create the repo private.
        hub_dry_run: list the files that would be uploaded; upload nothing.
    """

    folder: str = field(metadata={"help": "A finished output folder of `hf-gnft defend`."})
    hub_model_id: str | None = field(
        default=None, metadata={"help": "The Hub repo, NAMESPACE/NAME (created if it does not exist)."}
    )
    hub_private_repo: bool | None = field(default=None, metadata={"help": "Create the repo private."})
    hub_dry_run: bool = field(
        default=False, metadata={"help": "List the files that would be uploaded; upload nothing."}
    )


def parse_args(argv: list[str] | None = None) -> tuple:
    """(the push arguments,) from flags, a YAML/JSON file or both."""
    return parse_recipe_args((PushArguments,), argv)


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = parse_args(argv)
    result = push_output_dir(
        args.folder, args.hub_model_id, private=args.hub_private_repo, dry_run=args.hub_dry_run
    )
    summary = {"repo_id": result.repo_id, "files": result.files, "url": result.url, "dry_run": result.dry_run}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
