"""`hf-gnft push` as a script (e.g. for `accelerate launch`); usage: `hf_gnft.scripts.push`."""

from hf_gnft.scripts.push import main

if __name__ == "__main__":
    main()
