"""`hf-gnft benchmark` as a script (e.g. for `accelerate launch`); usage: `hf_gnft.scripts.benchmark`."""

from hf_gnft.scripts.benchmark import main

if __name__ == "__main__":
    main()
