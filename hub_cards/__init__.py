"""Model cards, export, Hub publishing and conversion of the original LLaMo release.

    from llamo.hub_cards import ModelCardOptions, export_model, plan_push, push_folder

    export_model("runs/stage2/merged", "export/llamo", ModelCardOptions(repo_id="me/llamo", results=["results.json"]))
    push_folder(plan_push("export/llamo", "me/llamo"))

or `llamo export`, `llamo push`, `llamo convert-original` and `llamo dataset-card` on the command line.

- `cards`: the model card (metadata, `model-index` from `llamo evaluate` results, usage, training recipe, data
  credits, limitations, citation) and the dataset card of generated instruction data.
- `export`: one Hub-ready folder; `config.json` declares the `molecule-text-generation` pipeline
  (`pipeline_llamo.py`), so `pipeline(model=folder_or_repo, trust_remote_code=True)` finds it without a task name.
- `publish`: `create_repo` + `upload_folder`, with a dry run that contacts nothing.
- `convert`: the original Lightning checkpoint + its base LLM folder -> an export folder (an alias of
  `llamo.convert_llamo_original_to_hf`, where the conversion lives).
"""

from llamo import lazy_exports

_EXPORTS = {
    "CardError": "cards",
    "ModelCardOptions": "cards",
    "ModelSummary": "cards",
    "build_dataset_card": "cards",
    "build_model_card": "cards",
    "load_generation_summary": "cards",
    "CheckpointError": "convert",
    "UnsafeCheckpointError": "convert",
    "convert_original_checkpoint": "convert",
    "load_checkpoint_state_dict": "convert",
    "split_original_state_dict": "convert",
    "DATA_CREDITS": "credits",
    "LLAMO_CITATION": "credits",
    "CUSTOM_PIPELINES": "export",
    "REMOTE_CODE_FILES": "export",
    "ExportError": "export",
    "ExportResult": "export",
    "export_model": "export",
    "write_export": "export",
    "PushError": "publish",
    "UploadPlan": "publish",
    "plan_push": "publish",
    "push_folder": "publish",
    "TrainingRun": "recipe",
    "find_runs": "recipe",
    "EvaluationResults": "results",
    "ResultsFileError": "results",
    "load_results": "results",
    "metric_display_name": "results",
    "model_index_results": "results",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
