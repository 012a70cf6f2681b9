from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent

setup(
    name="llamo",
    version="0.1.0.dev0",
    description="LLaMo (NeurIPS 2024), Hugging Face-native: a molecular graph assistant built on any causal LM",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[
        "llamo",
        "llamo.processing",
        "llamo.training",
        "llamo.hub_cards",
        "llamo.hub_cards.space",
        "llamo.evaluation",
    ],
    package_dir={
        "llamo": "modeling_llamo",
        "llamo.processing": "processing",
        "llamo.training": "training",
        "llamo.hub_cards": "hub_cards",
        "llamo.hub_cards.space": "hub_cards/space",
        "llamo.evaluation": "evaluation",
    },
    install_requires=[
        "torch>=2.4",
        "transformers>=5.24,<6",
        "torch-geometric>=2.6",
        "rdkit>=2024.3",
        "numpy>=1.26",
        "safetensors>=0.4",
        "huggingface_hub>=1.0",
        "httpx2",  # the OpenAI-compatible teacher's own client (huggingface_hub's HTTP library)
        "accelerate>=1.0",
        "tqdm",
        "datasets>=3.0",
        "trl>=1.0,<2",
        "peft>=0.17",
        "pandas",
        "pyyaml",
        "jinja2>=3.1",
        "selfies>=2.1",
    ],
    extras_require={
        "eval": ["nltk>=3.9", "rouge_score>=0.1.2", "py2opsin>=1.2", "openclatura>=0.4"],
        "demo": ["gradio>=6,<7", "openclatura>=0.4"],  # the namer: name hints of descriptions (README, *Name hints*)
        "browser-tests": ["playwright>=1.45"],
        "test": [
            "pytest>=8",
            "ruff>=0.6",
            "chemicals",
            "nltk>=3.9",
            "rouge_score>=0.1.2",
            "py2opsin>=1.2",
            "openclatura>=0.4",
            "gradio>=6,<7",
            "playwright>=1.45",
        ],
        # packaged data sources: the `chemicals` IUPAC table and QM9 (`qm9pack`, a 104 MB wheel, 224 MB installed;
        # left out of `test`, whose qm9pack test skips without it: `pip install -e .[test,data]` runs it)
        "data": ["qm9pack>=1.0", "chemicals"],
        "bench": ["ogb==1.3.5"],
        # the default model: the GGUF reader for its base LLM, and the rule-based namer its answers use
        "smollm2": ["gguf>=0.10", "openclatura>=0.4"],
    },
    package_data={
        "llamo": ["bundled/*/*"],
        "llamo.training": ["recipes/*.yaml", "accelerate/*.yaml"],
        "llamo.hub_cards": ["templates/*.md"],
        "llamo.hub_cards.space": ["README.md", "requirements.txt"],
    },
    entry_points={"console_scripts": ["llamo=llamo.cli:main"]},
)
