"""`hf-gnft defend` as a script (e.g. for `accelerate launch`); usage: `hf_gnft.scripts.defend`."""

from hf_gnft.scripts.defend import main

if __name__ == "__main__":
    main()
