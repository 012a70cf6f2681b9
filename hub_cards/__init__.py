"""Model cards, export and Hub publishing (the original release is converted by `llamo.convert_llamo_original_to_hf`).

    from llamo.hub_cards import ModelCardOptions, export_model, plan_push, push_folder

    export_model("runs/stage2/merged", "export/llamo", ModelCardOptions(repo_id="me/llamo", results=["results.json"]))
    push_folder(plan_push("export/llamo", "me/llamo"))

or `llamo export`, `llamo push`, `llamo convert-original` and `llamo dataset-card` on the command line."""

from llamo import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("CardError", "ModelCardOptions", "build_dataset_card", "build_model_card"), "cards"),
    "load_generation_summary": "cards",
    **dict.fromkeys(("DATA_CREDITS", "LLAMO_CITATION"), "credits"),
    **dict.fromkeys(("REMOTE_CODE_FILES", "ExportError", "ExportResult", "export_model", "write_export"), "export"),
    **dict.fromkeys(("PushError", "UploadPlan", "plan_push", "push_folder"), "publish"),
    **dict.fromkeys(("TrainingRun", "find_runs"), "recipe"),
    **dict.fromkeys(("EvaluationResults", "ResultsFileError", "load_results"), "results"),
    **dict.fromkeys(("metric_display_name", "model_index_results"), "results"),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
