//! Redaction keeps lengths and JSON validity; decoding for scanning honours the byte cap.

mod support;

use std::io::Write;

use postern_scan::{decode_for_scan, redact, ContentTypeHint, Scanner, UnscannedReason};
use support::corpus;

#[test]
fn redaction_keeps_length_and_json_validity_over_the_corpus() {
    let scanner = Scanner::default();
    let mut redacted_findings = 0;
    for sample in corpus::generate(11, 1200) {
        let body = sample.body.as_bytes();
        let result = scanner.scan(body, support::hint(sample.syntax));
        let redacted = redact(body, &result.findings);
        assert_eq!(redacted.len(), body.len());
        redacted_findings += result.findings.len();
        if sample.syntax == corpus::Syntax::Json {
            for (original, line) in sample
                .body
                .lines()
                .zip(std::str::from_utf8(&redacted).unwrap().lines())
            {
                serde_json::from_str::<serde_json::Value>(original).expect("corpus line is JSON");
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|error| panic!("redacted JSON invalid: {error}"));
            }
        }
        // Nothing that was found is still there.
        let again = scanner.scan(&redacted, support::hint(sample.syntax));
        for finding in &again.findings {
            assert!(
                !result
                    .findings
                    .iter()
                    .any(|f| f.start < finding.end && finding.start < f.end),
                "{} survived redaction",
                finding.class
            );
        }
    }
    assert!(redacted_findings > 1000);
}

#[test]
fn redaction_masks_whole_escapes_and_bare_numbers() {
    let input = br#"{"card":4111111111111111,"m":"a\u00e9b@example.com"}"#;
    let result = Scanner::default().scan(input, ContentTypeHint::Json);
    let redacted = redact(input, &result.findings);
    let text = std::str::from_utf8(&redacted).unwrap();
    assert_eq!(
        text,
        r#"{"card":9999999999999999,"m":"a\u00e9b@example.com"}"#
            .replace("b@example.com", "*************")
    );
    serde_json::from_str::<serde_json::Value>(text).unwrap();
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn brotli_compress(data: &[u8]) -> Vec<u8> {
    let mut output = Vec::new();
    {
        let mut writer = brotli::CompressorWriter::new(&mut output, 4096, 5, 22);
        writer.write_all(data).unwrap();
    }
    output
}

#[test]
fn gzip_and_brotli_bodies_are_decoded_for_scanning() {
    let body = br#"{"email":"jane@example.com"}"#;
    for (encoding, compressed) in [
        ("gzip", gzip(body)),
        ("br", brotli_compress(body)),
        ("GZIP", gzip(body)),
    ] {
        let decoded = decode_for_scan(&compressed, Some(encoding), 1024).unwrap();
        assert_eq!(&*decoded, body);
        assert_eq!(
            Scanner::default()
                .scan(&decoded, ContentTypeHint::Json)
                .count("pii.email"),
            1
        );
    }
    // Codings are undone last first.
    let both = brotli_compress(&gzip(body));
    assert_eq!(
        &*decode_for_scan(&both, Some("gzip, br"), 1024).unwrap(),
        body
    );
    // No coding: borrowed as is.
    assert!(matches!(
        decode_for_scan(body, None, 1024).unwrap(),
        std::borrow::Cow::Borrowed(_)
    ));
    assert!(matches!(
        decode_for_scan(body, Some("identity"), 1024).unwrap(),
        std::borrow::Cow::Borrowed(_)
    ));
}

#[test]
fn beyond_the_cap_the_body_is_unscanned_never_silently_skipped() {
    let big = vec![b'a'; 100_000];
    let bomb = gzip(&big);
    assert!(bomb.len() < 1000);
    let error = decode_for_scan(&bomb, Some("gzip"), 10_000).unwrap_err();
    assert_eq!(
        error.reason,
        UnscannedReason::TooLarge { max_bytes: 10_000 }
    );
    assert_eq!(
        error.to_string(),
        "body not scanned: body exceeds scan_max_body_bytes (10000) after decoding"
    );
    assert_eq!(
        decode_for_scan(&brotli_compress(&big), Some("br"), 10_000)
            .unwrap_err()
            .reason,
        UnscannedReason::TooLarge { max_bytes: 10_000 }
    );
    assert_eq!(
        decode_for_scan(&big, None, 10_000).unwrap_err().reason,
        UnscannedReason::TooLarge { max_bytes: 10_000 }
    );
    // Exactly at the cap is fine.
    assert_eq!(
        decode_for_scan(&gzip(&big[..10_000]), Some("gzip"), 10_000)
            .unwrap()
            .len(),
        10_000
    );
    assert!(matches!(
        decode_for_scan(b"x", Some("compress"), 10)
            .unwrap_err()
            .reason,
        UnscannedReason::UnsupportedEncoding { .. }
    ));
    assert!(matches!(
        decode_for_scan(b"not gzip", Some("gzip"), 10)
            .unwrap_err()
            .reason,
        UnscannedReason::Corrupt { .. }
    ));
}
