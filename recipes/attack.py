"""`hf-gnft attack` as a script (e.g. for `accelerate launch`); usage: `hf_gnft.scripts.attack`."""

from hf_gnft.scripts.attack import main

if __name__ == "__main__":
    main()
