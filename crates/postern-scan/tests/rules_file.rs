//! Rule files extend or override the built-ins by id, in the spirit of gitleaks.

use postern_scan::{ContentTypeHint, RuleError, Rules, Scanner};

fn classes(scanner: &Scanner, input: &str) -> Vec<String> {
    scanner
        .scan(input.as_bytes(), ContentTypeHint::Text)
        .findings
        .iter()
        .map(|f| format!("{}:{}", f.class, &input[f.start..f.end]))
        .collect()
}

#[test]
fn a_new_rule_extends_the_builtins() {
    let scanner = Scanner::with_rule_file(
        r#"
        [[rules]]
        id = "acme-internal-token"
        class = "secret.acme_token"
        keywords = ["acme_"]
        regex = '\bacme_[a-z0-9]{20}\b'
        entropy_min = 3.0
        "#,
    )
    .unwrap();
    assert_eq!(
        classes(&scanner, "t=acme_k3j4h5g6f7d8s9a0q1w2 mail a@example.com"),
        [
            "secret.acme_token:acme_k3j4h5g6f7d8s9a0q1w2",
            "pii.email:a@example.com"
        ]
    );
    // The entropy floor applies.
    assert_eq!(
        classes(&scanner, "t=acme_aaaaaaaaaaaaaaaaaaaa"),
        Vec::<String>::new()
    );
}

#[test]
fn a_rule_with_a_builtin_id_replaces_it() {
    let input = "mail a@example.com and b@localhost";
    assert_eq!(
        classes(&Scanner::default(), input),
        ["pii.email:a@example.com"]
    );
    let scanner = Scanner::with_rule_file(
        r#"
        [[rules]]
        id = "email"
        class = "pii.email"
        keywords = ["@"]
        regex = '[a-z]+@[a-z.]+'
        "#,
    )
    .unwrap();
    assert_eq!(
        classes(&scanner, input),
        ["pii.email:a@example.com", "pii.email:b@localhost"]
    );
}

#[test]
fn a_builtin_can_be_switched_off_and_a_native_detector_replaced() {
    let scanner = Scanner::with_rule_file(
        r#"
        [[rules]]
        id = "phone"
        class = "pii.phone"
        enabled = false

        [[rules]]
        id = "payment-card"
        class = "payment.card"
        regex = '\b4[0-9]{15}\b'
        keywords = ["4"]
        validator = "luhn"
        "#,
    )
    .unwrap();
    assert_eq!(
        classes(
            &scanner,
            "call 415-555-2671, card 4111111111111111 or 5555555555554444"
        ),
        ["payment.card:4111111111111111"]
    );
}

#[test]
fn key_context_rules_are_data_too() {
    let scanner = Scanner::with_rule_file(
        r#"
        [[rules]]
        id = "employee-id"
        class = "pii.employee_id"
        key_context = ["employee_id", "staff_number"]
        regex = '\A(E[0-9]{6})\z'
        "#,
    )
    .unwrap();
    let input = r#"{"employeeId":"E123456","ticket":"E123456","staff-number":"E654321"}"#;
    let found: Vec<_> = scanner
        .scan(input.as_bytes(), ContentTypeHint::Json)
        .findings
        .iter()
        .map(|f| &input[f.start..f.end])
        .collect();
    assert_eq!(found, ["E123456", "E654321"]);
}

#[test]
fn bad_rule_files_are_refused_with_the_rule_named() {
    let error =
        Scanner::with_rule_file("[[rules]]\nid = \"x\"\nclass = \"c\"\nregex = '('\n").unwrap_err();
    assert!(
        matches!(&error, RuleError::Regex { id, .. } if id == "x"),
        "{error}"
    );
    let error =
        Rules::from_toml_str("[[rules]]\nid = \"x\"\nclass = \"c\"\nregex = 'a'\ncolour = 1\n")
            .unwrap_err();
    assert!(error.to_string().contains("colour"), "{error}");
    let error = Rules::from_toml_str("[[rules]]\nid = \"x\"\nclass = \"c\"\n").unwrap_err();
    assert!(matches!(error, RuleError::RegexOrDetector { .. }));
    let error = Rules::from_toml_str("[[rules]]\nid = \"x\"\nclass = \"c\"\nregex = 'a'\n[[rules]]\nid = \"x\"\nclass = \"c\"\nregex = 'b'\n").unwrap_err();
    assert!(matches!(error, RuleError::DuplicateId { .. }));
}

#[test]
fn scanners_with_different_rules_can_share_a_thread() {
    // Each thread remembers which keys matter, per scanner: alternating must not mix them up.
    let custom = Scanner::with_rule_file(
        r#"
        [[rules]]
        id = "employee-id"
        class = "pii.employee_id"
        key_context = ["employee_id"]
        regex = '\A(E[0-9]{6})\z'
        "#,
    )
    .unwrap();
    let builtin = Scanner::default();
    let input = r#"{"employeeId":"E123456","password":"Zx81!kq0PwLm2#rT"}"#;
    let classes = |scanner: &Scanner| -> Vec<String> {
        scanner
            .scan(input.as_bytes(), ContentTypeHint::Json)
            .classes()
            .map(str::to_owned)
            .collect()
    };
    for _ in 0..3 {
        assert_eq!(classes(&builtin), ["secret.generic"]);
        assert_eq!(classes(&custom), ["pii.employee_id", "secret.generic"]);
    }
}

#[test]
fn key_rule_keywords_must_appear_in_the_key() {
    // With `keywords`, a key rule applies only to keys holding one of them as written.
    let scanner = Scanner::with_rule_file(
        r#"
        [[rules]]
        id = "badge"
        class = "pii.badge"
        key_context = ["badge"]
        keywords = ["Badge"]
        regex = '\A([0-9]{5})\z'
        "#,
    )
    .unwrap();
    let input = r#"{"staffBadge":"12345","badge":"54321"}"#;
    let found: Vec<_> = scanner
        .scan(input.as_bytes(), ContentTypeHint::Json)
        .findings
        .iter()
        .map(|f| &input[f.start..f.end])
        .collect();
    assert_eq!(found, ["12345"]);
}

#[test]
fn scan_into_reuses_the_result() {
    let scanner = Scanner::default();
    let mut result = postern_scan::ScanResult::default();
    scanner.scan_into(b"mail ada@example.com", ContentTypeHint::Text, &mut result);
    assert_eq!(result.count("pii.email"), 1);
    scanner.scan_into(b"nothing here", ContentTypeHint::Text, &mut result);
    assert!(result.findings.is_empty() && result.class_counts.is_empty());
    assert_eq!(
        result,
        scanner.scan(b"nothing here", ContentTypeHint::Text),
        "scan_into gives what scan gives"
    );
}

/// A custom keyword rule's scan stays linear when its keyword is everywhere and its regex
/// matches nowhere near: each hit searched a window up to the rule's longest match (16 KiB
/// when unbounded), so a body dense with the keyword cost hits × window (a 128 KiB body took
/// two minutes with a `{0,100000}` rule); past a budget the rule runs once over the body.
#[test]
fn a_custom_keyword_rule_costs_a_constant_per_hit() {
    for (pattern, size) in [
        (r"[a-z]{1,32}@acme[a-z0-9.]{0,100000}\.internal", 128 * 1024),
        (r"[a-z]+@acme[a-z0-9.]*\.internal", 1024 * 1024),
    ] {
        let scanner = Scanner::with_rule_file(&format!(
            "[[rules]]\nid = \"acme-internal\"\nclass = \"pii.acme\"\nkeywords = [\"@\"]\nregex = '{pattern}'\n"
        ))
        .unwrap();
        let body = |unit: &str| unit.repeat(size / unit.len());
        // The least of three scans, so that what else the machine runs meanwhile counts little.
        let scan_time = |input: &str| {
            (0..3)
                .map(|_| {
                    let started = std::time::Instant::now();
                    let result = scanner.scan(input.as_bytes(), ContentTypeHint::Text);
                    let took = started.elapsed();
                    assert_eq!(result.count("pii.acme"), 0);
                    took
                })
                .min()
                .unwrap()
        };
        let (took, baseline) = (scan_time(&body("x@acme")), scan_time(&body("x#acme")));
        // Without the budget: 82 s and 18 times the baseline in a debug build; with it, about
        // 50 ms (20 times a baseline of 2.5 ms) and 5 to 7 times. The bound is loose, for a
        // loaded machine: what it must catch is the first, whose windows grow with the rule.
        assert!(
            took < baseline * 12 + std::time::Duration::from_secs(2),
            "{pattern}: {size} bytes took {took:?}, {baseline:?} with no hits"
        );
    }
    // Still found past the budget: matches that hold a hit, none that do not.
    let scanner = Scanner::with_rule_file(
        "[[rules]]\nid = \"acme-internal\"\nclass = \"pii.acme\"\nkeywords = [\"@\"]\nregex = '[a-z]+@acme[a-z0-9.]*\\.internal'\n",
    )
    .unwrap();
    let input = format!(
        "{}bob@acme.eu.internal and acme.internal {}carol@acme.internal",
        "x@acme ".repeat(20_000),
        "y@acme ".repeat(20_000)
    );
    let found: Vec<&str> = scanner
        .scan(input.as_bytes(), ContentTypeHint::Text)
        .findings
        .iter()
        .filter(|f| &*f.class == "pii.acme")
        .map(|f| &input[f.start..f.end])
        .collect();
    assert_eq!(found, ["bob@acme.eu.internal", "carol@acme.internal"]);
}

/// A rule file with more rules than a scanner runs is refused, naming the bound (it panicked).
#[test]
fn too_many_rules_are_refused() {
    let text: String = (0..postern_scan::MAX_RULES + 1)
        .map(|n| format!("[[rules]]\nid = \"r{n}\"\nclass = \"pii.r\"\nregex = 'r{n}x'\n"))
        .collect();
    match Scanner::with_rule_file(&text) {
        Err(error @ RuleError::TooMany { .. }) => {
            assert!(error.to_string().contains("at most 4096"), "{error}")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}
