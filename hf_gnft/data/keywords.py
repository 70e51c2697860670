"""Label names shared by every keyword data source (the Speech Commands / SUPERB KS setup)."""

#: The 10 keywords of the SUPERB keyword-spotting task.
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SILENCE_LABEL = "_silence_"
UNKNOWN_LABEL = "_unknown_"
#: The other Speech Commands words (spoken for `_unknown_` by the synthetic corpus).
UNKNOWN_WORDS = (
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)  # fmt: skip
