"""Evaluation of LLaMo on description, IUPAC naming and property QA under the field's metric protocols.

    from llamo.evaluation import EvaluationConfig, evaluate

    results = evaluate(EvaluationConfig(model="path/to/llamo", data="test.jsonl", output_dir="eval/test"))

or `llamo evaluate MODEL_DIR --data test.jsonl --output-dir eval/test`. One model over every task present in the
data (generalist) or over one `--task` (specialist); the `retrieval`, `mean` and `no-graph` baselines run through the
same harness and metric code. Predictions are saved as they are made and an interrupted run resumes
(`llamo.evaluation.predictions`). METEOR needs WordNet: `llamo setup-wordnet` (`llamo.evaluation.wordnet`).

Metrics by task (text: `description`, `conversation` and any other task name; `iupac`; `property`):

- text: `bleu2_*`, `bleu4_*`, `meteor_*` per tokenization protocol; `rouge1/rouge2/rougeL_molt5_raw_text`.
- iupac: `bleu4_*`, `meteor_*`; `exact_match_normalized` (case and whitespace ignored); `parse_rate_opsin`,
  `structure_match_opsin_inchikey` and `structure_match_opsin_inchikey_connectivity` (OPSIN parses the predicted
  name back to a structure).
- property: `mae_<property>_<unit>` and the pooled `mae_<unit>`, each beside `valid_ratio_<property>` / `valid_ratio`.
  An answer is valid when it is essentially one number ("-0.25", "The HOMO is -0.25 Hartree."; not "C6H6"); the
  ratio's denominator is every property question with a target, those left unanswered included (SMILES unparsable
  or refused by the processor), see `llamo.evaluation.properties`.

All are on a 0-100 scale except MAE (in the property's unit, Hartree for QM9).

Protocols (`*` above): `molt5_scibert` (SciBERT WordPiece, the field's standard) and `llamo_llm_tokens` (the LLM's
tokenizer, LLaMo's own evaluator); see `llamo.evaluation.text_metrics`. Numbers under different protocols are not
comparable.

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
`unavailable_metrics` with the reason, never given a number.
"""

from llamo import lazy_exports

_EXPORTS = {
    name: module
    for module, names in {
        "baselines": "MeanBaseline RetrievalBaseline",
        "data": "DatasetInfo EvalExample SkippedRow load_rows select_examples",
        "naming": "names_to_smiles naming_metrics",
        "predictions": "PredictionRecord PredictionStore",
        "properties": "parse_number property_metrics",
        "config": "BASELINES EvaluationConfig",
        "runner": "evaluate",
        "text_metrics": "LLAMO_PROTOCOL MOLT5_PROTOCOL MetricReport MetricValue TokenProtocol compute_text_metrics "
        "load_scibert_tokenizer molt5_protocol",
        "wordnet": "WordNetUnavailable load_wordnet setup_wordnet",
    }.items()
    for name in names.split()
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
