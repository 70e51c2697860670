"""`python -m hf_gnft COMMAND ...`: `hf-gnft COMMAND ...` as a module (for `accelerate launch -m hf_gnft`)."""

import sys

from hf_gnft.cli import main

if __name__ == "__main__":
    sys.exit(main())
