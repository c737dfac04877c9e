#!/usr/bin/env python3
"""Postern's scanner and Microsoft Presidio's pattern recognizers, side by side.

Both run on the same labelled corpus (exported by the `corpus_jsonl` example of
crates/postern-scan). Presidio runs with its pattern-based recognizers only: its default
AnalyzerEngine needs a spaCy model (en_core_web_lg), which is not installed and cannot be
downloaded offline, so the engine is given an NLP engine that returns no entities and no tokens.
Presidio has no recognizers for API keys and tokens, so only the PII classes are compared.

A finding is a true positive when a label of the same class overlaps it (each label matched
once), for both scanners.

Usage (see README.md):
    python presidio_compare.py --corpus corpus.jsonl --postern-findings postern.jsonl \
        --postern-timing postern-timing.json [--samples N]
"""

import argparse
import json
import sys
import time
from collections import defaultdict

# Presidio entity -> Postern class, for the classes both can detect.
ENTITY_TO_CLASS = {
    "EMAIL_ADDRESS": "pii.email",
    "PHONE_NUMBER": "pii.phone",
    "CREDIT_CARD": "payment.card",
    "IBAN_CODE": "payment.iban",
    "US_SSN": "pii.us_ssn",
    "IP_ADDRESS": "pii.ip_address",
    # Presidio's DateRecognizer finds every date; Postern reports dates of birth only (by key).
    "DATE_TIME": "pii.date_of_birth",
}


def build_presidio():
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        DateRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    class NoNlpEngine(NlpEngine):
        """An NLP engine with no model: no named entities, no tokens, no lemmas."""

        def load(self):
            pass

        def is_loaded(self):
            return True

        def process_text(self, text, language):
            return NlpArtifacts(entities=[], tokens=[], tokens_indices=[], lemmas=[], nlp_engine=self, language=language)

        def process_batch(self, texts, language, batch_size=1, n_process=1, **kwargs):
            for text in texts:
                yield text, self.process_text(text, language)

        def is_stopword(self, word, language):
            return False

        def is_punct(self, word, language):
            return False

        def get_supported_entities(self):
            return []

        def get_supported_languages(self):
            return ["en"]

    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in (
        EmailRecognizer(),
        PhoneRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        UsSsnRecognizer(),
        IpRecognizer(),
        DateRecognizer(),
    ):
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(registry=registry, nlp_engine=NoNlpEngine(), supported_languages=["en"])


def tally(samples, predictions, classes):
    """predictions: id -> list of (class, start, end). Returns class -> [tp, fp, fn]."""
    counts = {cls: [0, 0, 0] for cls in classes}
    for sample in samples:
        labels = [l for l in sample["labels"] if l["class"] in counts]
        matched = [False] * len(labels)
        for cls, start, end in predictions.get(sample["id"], []):
            if cls not in counts:
                continue
            hit = None
            for index, label in enumerate(labels):
                if not matched[index] and label["class"] == cls and label["start"] < end and start < label["end"]:
                    hit = index
                    break
            if hit is None:
                counts[cls][1] += 1
            else:
                matched[hit] = True
                counts[cls][0] += 1
        for label, was_matched in zip(labels, matched):
            if not was_matched:
                counts[label["class"]][2] += 1
    return counts


def ratio(numerator, denominator):
    return numerator / denominator if denominator else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--postern-findings", required=True)
    parser.add_argument("--postern-timing", required=True)
    parser.add_argument("--samples", type=int, default=0, help="use only the first N samples (0 = all)")
    parser.add_argument("--score-threshold", type=float, default=0.0, help="Presidio score threshold (its default is 0)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()

    with open(args.corpus) as handle:
        samples = [json.loads(line) for line in handle]
    if args.samples:
        samples = samples[: args.samples]
    ids = {sample["id"] for sample in samples}

    postern = {}
    with open(args.postern_findings) as handle:
        for line in handle:
            row = json.loads(line)
            if row["id"] in ids:
                postern[row["id"]] = [(f["class"], f["start"], f["end"]) for f in row["findings"]]
    with open(args.postern_timing) as handle:
        postern_timing = json.load(handle)

    analyzer = build_presidio()
    entities = list(ENTITY_TO_CLASS)
    analyzer.analyze(text="warm up jane@example.com 4111 1111 1111 1111", entities=entities, language="en")
    presidio = {}
    total_bytes = sum(len(sample["text"]) for sample in samples)
    started, started_cpu = time.perf_counter(), time.process_time()
    for sample in samples:
        results = analyzer.analyze(text=sample["text"], entities=entities, language="en", score_threshold=args.score_threshold)
        presidio[sample["id"]] = [(ENTITY_TO_CLASS[r.entity_type], r.start, r.end) for r in results]
    presidio_seconds = time.perf_counter() - started
    presidio_cpu_seconds = time.process_time() - started_cpu

    classes = list(dict.fromkeys(ENTITY_TO_CLASS.values()))
    postern_counts = tally(samples, postern, classes)
    presidio_counts = tally(samples, presidio, classes)
    # Postern's throughput over the whole exported corpus (it scanned every sample).
    postern_mb_s = postern_timing["mb_per_s"]
    postern_cpu_mb_s = postern_timing.get("cpu_mb_per_s", float("nan"))
    presidio_mb_s = total_bytes / 1e6 / presidio_seconds
    presidio_cpu_mb_s = total_bytes / 1e6 / presidio_cpu_seconds

    result = {"samples": len(samples), "bytes": total_bytes, "classes": {}, "postern_mb_per_s": postern_mb_s, "postern_cpu_mb_per_s": postern_cpu_mb_s, "presidio_mb_per_s": presidio_mb_s, "presidio_cpu_mb_per_s": presidio_cpu_mb_s}
    header = f"{'class':<20} {'labels':>6} | {'postern P':>9} {'R':>6} | {'presidio P':>10} {'R':>6}"
    lines = [f"corpus: {len(samples)} samples, {total_bytes / 1e6:.2f} MB; Presidio score threshold {args.score_threshold}", header, "-" * len(header)]
    for cls in classes:
        ptp, pfp, pfn = postern_counts[cls]
        qtp, qfp, qfn = presidio_counts[cls]
        row = {
            "labels": ptp + pfn,
            "postern": {"precision": ratio(ptp, ptp + pfp), "recall": ratio(ptp, ptp + pfn), "tp": ptp, "fp": pfp, "fn": pfn},
            "presidio": {"precision": ratio(qtp, qtp + qfp), "recall": ratio(qtp, qtp + qfn), "tp": qtp, "fp": qfp, "fn": qfn},
        }
        result["classes"][cls] = row
        lines.append(
            f"{cls:<20} {row['labels']:>6} | {row['postern']['precision']:>9.3f} {row['postern']['recall']:>6.3f} | "
            f"{row['presidio']['precision']:>10.3f} {row['presidio']['recall']:>6.3f}"
        )
    lines.append(f"throughput, one thread, by CPU time: postern {postern_cpu_mb_s:.1f} MB/s, presidio {presidio_cpu_mb_s:.3f} MB/s")
    lines.append(f"throughput, one thread, by wall clock: postern {postern_mb_s:.1f} MB/s, presidio {presidio_mb_s:.3f} MB/s ({presidio_seconds:.1f} s)")
    print(json.dumps(result, indent=2) if args.json else "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
