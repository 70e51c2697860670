"""`hf-gnft analyze` as a script (e.g. for `accelerate launch`); usage: `hf_gnft.scripts.analyze`."""

from hf_gnft.scripts.analyze import main

if __name__ == "__main__":
    main()
