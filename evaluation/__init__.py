"""Evaluation of LLaMo on description, IUPAC naming and property QA under the field's metric protocols.

    from llamo.evaluation import EvaluationConfig, evaluate

    results = evaluate(EvaluationConfig(model="path/to/llamo", data="test.jsonl", output_dir="eval/test"))

or `llamo evaluate MODEL_DIR --data test.jsonl --output-dir eval/test`. One model over every task present in the
data (generalist) or over one `--task` (specialist); the `retrieval`, `mean` and `no-graph` baselines run through the
same harness and metric code. Predictions are saved as they are made and an interrupted run resumes
(`llamo.evaluation.predictions`). Each task is scored by its family: `iupac` by `llamo.evaluation.naming`,
`property` by `llamo.evaluation.properties`, any other task by `llamo.evaluation.text_metrics` (which describes the
tokenization protocols: numbers under different protocols are not comparable). METEOR needs WordNet: `llamo
setup-wordnet` (`llamo.evaluation.wordnet`). All metrics are on a 0-100 scale except MAE (in the property's unit).

Results format (`results.json`, `format: "llamo-evaluation"`, `format_version: 1`), built so that a model card's
`model-index` can be made from it (one `results` entry per task: `task`, `dataset`, `metrics`):

    {
      "format": "llamo-evaluation", "format_version": 1, "llamo_version": "...", "created_at": "ISO 8601, UTC",
      "model": {"name_or_path": "...", "fingerprint": "...", "evaluated": "model" | "baseline:<name>"},
      "baseline": null | {"name": "retrieval" | "mean" | "no-graph", "train_data": DATASET | null,
                          "train_rows_used": int},
      "dataset": DATASET,
      "decoding": null | {"strategy": "greedy" | "beam search" | "sampling", "max_new_tokens": int,
                          "min_new_tokens": int | null, "num_beams": int, "do_sample": bool,
                          ["temperature", "top_p", "seed" when sampling]},
      "scale": "...", "protocols": {"<protocol>": "what it means"},
      "results": [
        {
          "task": {"name": "description", "title": "Molecule description", "type": "text-generation"},
          "dataset": DATASET of this task's rows, plus "evaluated_rows",
          "counts": {"rows": int, "predicted": int, "skipped": int, "skipped_reasons": {"reason": int},
                     "empty_predictions": int,
                     iupac: "exact_matches", "opsin_parsed", "structure_matches", "connectivity_matches",
                            "targets_without_inchikey";
                     property: "valid_answers": {"rows", "valid", "invalid", "unanswered", "unit",
                                                 "per_property": {"homo": {"rows", "valid", "invalid",
                                                                           "unanswered", "unit"}}}},
          "metrics": [{"name": "bleu4_molt5_scibert", "type": "bleu", "value": 38.9, "unit": "percent",
                       "protocol": "molt5_scibert"}, ...],
          "unavailable_metrics": [{"name": "meteor_molt5_scibert", "type": "meteor", "reason": "..."}]
        }
      ],
      "rows_without_task": {"count": int, "reasons": {...}},
      "files": {"predictions": "predictions.jsonl", "tsv": {"<task>": "predictions.<task>.tsv"}}
    }

where DATASET is `{"name", "source" (path or Hub id), "kind" ("file" | "disk" | "hub" | "in-memory"), "split",
"rows"}`. A metric's `type` is its family (`bleu`, `meteor`, `rouge`, `exact_match`, `structure_match`,
`parse_rate`, `mae`, `valid_ratio`), its `name` carries the protocol; `unit` is `percent` (0-100) or the property's
unit (MAE). A metric that cannot be computed (no WordNet, no Java, no SciBERT vocabulary) is listed under
`unavailable_metrics` with the reason, never given a number."""

from llamo import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("MeanBaseline", "RetrievalBaseline"), "baselines"),
    **dict.fromkeys(("BASELINES", "EvaluationConfig"), "config"),
    **dict.fromkeys(("DatasetInfo", "EvalExample", "SkippedRow", "load_rows", "select_examples"), "data"),
    **dict.fromkeys(("names_to_smiles", "naming_metrics"), "naming"),
    **dict.fromkeys(("PredictionRecord", "PredictionStore"), "predictions"),
    **dict.fromkeys(("parse_number", "property_metrics"), "properties"),
    "evaluate": "runner",
    **dict.fromkeys(("LLAMO_PROTOCOL", "MOLT5_PROTOCOL", "MetricReport", "molt5_protocol"), "text_metrics"),
    **dict.fromkeys(("MetricValue", "TokenProtocol", "compute_text_metrics", "load_scibert_tokenizer"), "text_metrics"),
    **dict.fromkeys(("WordNetUnavailable", "load_wordnet", "setup_wordnet"), "wordnet"),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
