"""Setup for hf-gnft: Gradient Norm-based Fine-Tuning against audio backdoors."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "hf_gnft" / "version.py").read_text(), version)

setup(
    name="hf-gnft",
    version=version["__version__"],
    description=(
        "Gradient Norm-based Fine-Tuning (GN-FT): remove backdoors from speech classifiers, "
        "as a drop-in transformers Trainer"
    ),
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[*find_packages(include=["hf_gnft", "hf_gnft.*"]), "hf_gnft.model_cards"],
    # The model card templates live in the top-level model_cards/ and install as hf_gnft/model_cards/.
    package_dir={"hf_gnft.model_cards": "model_cards"},
    package_data={
        "hf_gnft": [
            "py.typed",
            "model_configs/*.json",
            "evaluate_modules/*/*.py",
            "analysis/scan_calibration.json",
        ],
        "hf_gnft.model_cards": ["*.md"],
    },
    entry_points={"console_scripts": ["hf-gnft = hf_gnft.cli:main"]},
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0,<6",
        "datasets>=4.0",
        "accelerate>=1.0",
        "evaluate>=0.4",
        "huggingface_hub>=1.0",
        "safetensors>=0.4",
        "numpy>=1.24",
        "scipy>=1.10",
        "soundfile>=0.12",
        "soxr>=0.3",
        "espeakng-loader>=0.2",
        "pyyaml>=6.0",
        "matplotlib>=3.7",
        "jinja2>=3.0",  # model cards (huggingface_hub.ModelCard.from_template)
        "filelock>=3.0",  # the benchmark's shared caches under the Ray executor
    ],
    extras_require={
        "dev": ["pytest>=8", "ruff>=0.6", "ray>=2.9"],
        # Grids on a Ray cluster (`hf-gnft benchmark --executor ray`): hf_gnft.executors.
        "ray": ["ray>=2.9"],
        # Optional decoders: datasets' own Audio decoding needs torchcodec + FFmpeg.
        "torchcodec": ["torchcodec"],
        "torchaudio": ["torchaudio"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Multimedia :: Sound/Audio :: Speech",
    ],
)
