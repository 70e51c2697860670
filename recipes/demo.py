"""`hf-gnft demo` as a script (e.g. for `accelerate launch`); usage: `hf_gnft.scripts.demo`."""

from hf_gnft.scripts.demo import main

if __name__ == "__main__":
    main()
