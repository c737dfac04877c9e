//! Who may call what, when. One line per case.

use postern_policy::{
    AuthzRequest, Decision, GrantSpec, IntegrationOps, PolicyEngine, PolicyError, Reason,
};

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

fn grant(caller: &str, integration: &str, operations: &[&str]) -> GrantSpec {
    GrantSpec {
        caller: caller.to_owned(),
        integration: integration.to_owned(),
        operations: strings(operations),
    }
}

fn compile(custom_policies: Option<&str>) -> Result<PolicyEngine, PolicyError> {
    PolicyEngine::compile(
        &strings(&["checkout", "support", "admin", "reports"]),
        &[
            IntegrationOps {
                integration: "stripe".to_owned(),
                operations: strings(&["create_charge", "get_charge", "refund"]),
            },
            IntegrationOps {
                integration: "twilio".to_owned(),
                operations: strings(&["send_message"]),
            },
        ],
        &[
            grant("checkout", "stripe", &["create_charge"]),
            grant("support", "stripe", &["get_charge", "refund"]),
            grant("admin", "stripe", &["*"]),
            grant("checkout", "twilio", &["send_message"]),
        ],
        custom_policies,
    )
}

/// A request at noon on a Wednesday from 10.0.0.7, 100 bytes, unless the
/// case overrides it.
fn request<'a>(caller: &'a str, target: &'a str) -> AuthzRequest<'a> {
    let (integration, operation) = target.split_once('/').expect("integration/operation");
    AuthzRequest {
        caller,
        integration,
        operation,
        method: "POST",
        hour: 12,
        weekday: 2,
        request_bytes: 100,
        source_ip: "10.0.0.7",
    }
}

/// `expected` is the reason's Display (`describe` for NotGranted).
#[track_caller]
fn check(engine: &PolicyEngine, req: AuthzRequest<'_>, expected: &str) {
    let decision = engine.authorize(&req);
    assert_eq!(decision.reason.describe(&req), expected);
    assert_eq!(
        decision.allowed,
        matches!(decision.reason, Reason::Granted { .. })
    );
}

#[test]
fn grants_allow_and_everything_else_is_denied() {
    let engine = compile(None).unwrap();
    assert!(!engine.depends_on_context());
    check(
        &engine,
        request("checkout", "stripe/create_charge"),
        "granted by grant-0",
    );
    check(
        &engine,
        request("checkout", "stripe/refund"),
        "no grant for caller checkout on stripe/refund",
    );
    check(
        &engine,
        request("support", "stripe/get_charge"),
        "granted by grant-1",
    );
    check(
        &engine,
        request("support", "stripe/refund"),
        "granted by grant-1",
    );
    check(
        &engine,
        request("support", "stripe/create_charge"),
        "no grant for caller support on stripe/create_charge",
    );
    check(
        &engine,
        request("checkout", "twilio/send_message"),
        "granted by grant-3",
    );
    check(
        &engine,
        request("reports", "stripe/get_charge"),
        "no grant for caller reports on stripe/get_charge",
    );
}

#[test]
fn star_grants_every_operation_of_the_integration() {
    let engine = compile(None).unwrap();
    check(
        &engine,
        request("admin", "stripe/create_charge"),
        "granted by grant-2",
    );
    check(
        &engine,
        request("admin", "stripe/refund"),
        "granted by grant-2",
    );
    check(
        &engine,
        request("admin", "twilio/send_message"),
        "no grant for caller admin on twilio/send_message",
    );
}

#[test]
fn unknown_names_are_not_granted() {
    let engine = compile(None).unwrap();
    check(
        &engine,
        request("mallory", "stripe/create_charge"),
        "no grant for caller mallory on stripe/create_charge",
    );
    check(
        &engine,
        request("checkout", "paypal/create_charge"),
        "no grant for caller checkout on paypal/create_charge",
    );
    check(
        &engine,
        request("checkout", "stripe/delete_everything"),
        "no grant for caller checkout on stripe/delete_everything",
    );
}

#[test]
fn reason_codes_and_display() {
    let granted = Reason::Granted {
        policy_id: "grant-0".into(),
    };
    let forbidden = Reason::Forbidden {
        policy_id: "custom-3".into(),
    };
    assert_eq!(
        (granted.code(), granted.to_string().as_str()),
        ("granted", "granted by grant-0")
    );
    assert_eq!(
        (forbidden.code(), forbidden.to_string().as_str()),
        ("policy_forbid", "forbidden by policy custom-3")
    );
    assert_eq!(Reason::NotGranted.code(), "not_granted");
}

const NIGHT_AND_SIZE: &str = r#"
// No calls at night.
forbid(principal, action, resource) when { context.hour < 6 };

@id("small-stripe-requests")
forbid(principal, action, resource in Postern::Integration::"stripe")
    unless { context.request_bytes < 1000 };

forbid(principal, action, resource)
    when { !context.source_ip.isInRange(ip("10.0.0.0/8")) };
"#;

#[test]
fn custom_forbid_by_hour() {
    let engine = compile(Some(NIGHT_AND_SIZE)).unwrap();
    assert!(engine.depends_on_context());
    check(
        &engine,
        request("checkout", "stripe/create_charge"),
        "granted by grant-0",
    );
    check(
        &engine,
        AuthzRequest {
            hour: 3,
            ..request("checkout", "stripe/create_charge")
        },
        "forbidden by policy custom-0",
    );
    check(
        &engine,
        AuthzRequest {
            hour: 6,
            ..request("checkout", "stripe/create_charge")
        },
        "granted by grant-0",
    );
    // Forbid only takes away; it does not grant.
    check(
        &engine,
        request("reports", "stripe/get_charge"),
        "no grant for caller reports on stripe/get_charge",
    );
    assert_eq!(
        engine.authorize(&AuthzRequest {
            hour: 3,
            ..request("checkout", "stripe/create_charge")
        }),
        Decision {
            allowed: false,
            reason: Reason::Forbidden {
                policy_id: "custom-0".into()
            }
        }
    );
}

#[test]
fn custom_forbid_by_request_bytes_and_source_ip() {
    let engine = compile(Some(NIGHT_AND_SIZE)).unwrap();
    check(
        &engine,
        AuthzRequest {
            request_bytes: 999,
            ..request("checkout", "stripe/create_charge")
        },
        "granted by grant-0",
    );
    check(
        &engine,
        AuthzRequest {
            request_bytes: 1000,
            ..request("checkout", "stripe/create_charge")
        },
        "forbidden by policy small-stripe-requests",
    );
    check(
        &engine,
        AuthzRequest {
            request_bytes: 5000,
            ..request("checkout", "twilio/send_message")
        },
        "granted by grant-3",
    );
    check(
        &engine,
        AuthzRequest {
            source_ip: "192.168.1.1",
            ..request("checkout", "twilio/send_message")
        },
        "forbidden by policy custom-2",
    );
    // An unparsable address fails closed.
    check(
        &engine,
        AuthzRequest {
            source_ip: "not-an-ip",
            ..request("checkout", "twilio/send_message")
        },
        "no grant for caller checkout on twilio/send_message",
    );
}

#[test]
fn custom_forbid_by_weekday_caller_integration_and_operation() {
    let engine = compile(Some(
        r#"@id("weekend")
forbid(principal, action, resource) when { context.weekday >= 5 && context.integration == "twilio" };
@id("no-refunds-for-support")
forbid(principal, action, resource)
    when { context.caller == "support" && context.operation == "refund" };"#,
    ))
    .unwrap();
    // Wednesday, then Friday (4), Saturday (5) and Sunday (6), on twilio.
    check(
        &engine,
        request("checkout", "twilio/send_message"),
        "granted by grant-3",
    );
    for (weekday, expected) in [
        (4, "granted by grant-3"),
        (5, "forbidden by policy weekend"),
        (6, "forbidden by policy weekend"),
    ] {
        check(
            &engine,
            AuthzRequest {
                weekday,
                ..request("checkout", "twilio/send_message")
            },
            expected,
        );
    }
    // The weekend rule names twilio only: stripe on a Saturday passes.
    check(
        &engine,
        AuthzRequest {
            weekday: 5,
            ..request("checkout", "stripe/create_charge")
        },
        "granted by grant-0",
    );
    // `support` may no longer refund, but may still read; `admin` may still refund.
    check(
        &engine,
        request("support", "stripe/refund"),
        "forbidden by policy no-refunds-for-support",
    );
    check(
        &engine,
        request("support", "stripe/get_charge"),
        "granted by grant-1",
    );
    check(
        &engine,
        request("admin", "stripe/refund"),
        "granted by grant-2",
    );
}

#[test]
fn whether_custom_policies_read_the_request_size_is_known() {
    assert!(compile(Some(NIGHT_AND_SIZE)).unwrap().reads_request_bytes());
    assert!(!compile(None).unwrap().reads_request_bytes());
    let by_hour = "// request_bytes is not read here\nforbid(principal, action, resource) when { context.hour < 6 };";
    assert!(!compile(Some(by_hour)).unwrap().reads_request_bytes());
}

#[test]
fn a_request_of_unknown_size_is_decided_only_where_the_size_cannot_change_the_answer() {
    let engine = compile(Some(NIGHT_AND_SIZE)).unwrap();
    let unsized_reason = |target| match engine.authorize_unsized(&request("checkout", target)) {
        Ok(decision) => format!("ok: {}", decision.reason),
        Err(refusing) => format!("size decides: {}", refusing.reason),
    };
    // stripe is bounded by size; twilio is not; reporting is refused whatever the size.
    assert_eq!(
        unsized_reason("stripe/create_charge"),
        "size decides: forbidden by policy small-stripe-requests"
    );
    assert_eq!(
        unsized_reason("twilio/send_message"),
        "ok: granted by grant-3"
    );
    assert!(engine
        .authorize_unsized(&request("reports", "stripe/create_charge"))
        .is_ok_and(|decision| !decision.allowed));
    // Without size rules nothing is asked twice: the decision stands.
    let plain = compile(None).unwrap();
    assert!(plain
        .authorize_unsized(&request("checkout", "stripe/create_charge"))
        .is_ok_and(|decision| decision.allowed));
}

/// A rule that refuses only a band of sizes in the middle passes as both the smallest and the
/// largest body; the sizes on either side of each number a policy compares the size with find
/// it, whichever way the comparison is written, and an exact size too.
#[test]
fn a_request_of_unknown_size_meets_a_size_band_refused_in_the_middle() {
    let unsized_reason = |policies: &str, target| {
        let engine = compile(Some(policies)).unwrap();
        match engine.authorize_unsized(&request("checkout", target)) {
            Ok(decision) => format!("ok: {}", decision.reason),
            Err(refusing) => format!("size decides: {}", refusing.reason),
        }
    };
    let band = r#"@id("no-mid-size-stripe")
forbid(principal, action, resource in Postern::Integration::"stripe")
    when { context.request_bytes > 1000 && 2000 >= context.request_bytes };"#;
    assert_eq!(
        unsized_reason(band, "stripe/create_charge"),
        "size decides: forbidden by policy no-mid-size-stripe"
    );
    // The band applies to stripe only: twilio's answer does not depend on the size.
    assert_eq!(
        unsized_reason(band, "twilio/send_message"),
        "ok: granted by grant-3"
    );
    let exact = r#"@id("not-4096")
forbid(principal, action, resource) when { context.request_bytes == 4096 };"#;
    assert_eq!(
        unsized_reason(exact, "twilio/send_message"),
        "size decides: forbidden by policy not-4096"
    );
    // A band that only permits (a custom permit for sizes the grant does not cover).
    let permit_band = r#"@id("reports-mid-size")
permit(principal == Postern::Caller::"reports", action, resource)
    when { context.request_bytes >= 10 && context.request_bytes <= 20 };"#;
    let engine = compile(Some(permit_band)).unwrap();
    assert!(engine
        .authorize_unsized(&request("reports", "twilio/send_message"))
        .is_err_and(|refusing| !refusing.allowed));
    // Sizes read but no number compared that changes this call's answer: it stands.
    let generous = r#"forbid(principal, action, resource) when { context.request_bytes < 0 };"#;
    assert_eq!(
        unsized_reason(generous, "stripe/create_charge"),
        "ok: granted by grant-0"
    );
}

/// A policy that reads the size other than by comparing it with a number: which sizes matter
/// is not known, so where the policy applies, a request of unknown size that would pass is
/// refused in its name (fail closed); one refused anyway keeps its refusal, and where the
/// policy cannot apply (another integration) nothing changes.
#[test]
fn a_size_read_that_is_not_a_comparison_with_a_number_fails_closed_where_it_applies() {
    let policies = r#"@id("scaled")
forbid(principal, action, resource in Postern::Integration::"stripe")
    when { context.request_bytes * 2 > 3000 };"#;
    let engine = compile(Some(policies)).unwrap();
    assert!(engine.reads_request_bytes());
    let notes = engine.notes();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].starts_with("policy scaled reads context.request_bytes"));
    assert!(compile(Some(NIGHT_AND_SIZE)).unwrap().notes().is_empty());
    let refusing = engine
        .authorize_unsized(&request("checkout", "stripe/create_charge"))
        .unwrap_err();
    assert_eq!(refusing.reason.to_string(), "forbidden by policy scaled");
    assert!(engine
        .authorize_unsized(&request("reports", "stripe/create_charge"))
        .is_ok_and(|decision| !decision.allowed));
    assert!(engine
        .authorize_unsized(&request("checkout", "twilio/send_message"))
        .is_ok_and(|decision| decision.allowed));
    // A known size is decided as ever.
    check(
        &engine,
        request("checkout", "stripe/create_charge"),
        "granted by grant-0",
    );
    // Refused at size 0 by such a policy: a declared size might pass, so a length is asked
    // for, not a refusal given.
    let small_refused = compile(Some(
        r#"@id("at-least-ten")
forbid(principal, action, resource) when { context.request_bytes * 1 < 10 };"#,
    ))
    .unwrap();
    assert!(small_refused
        .authorize_unsized(&request("checkout", "twilio/send_message"))
        .is_err_and(|refusing| refusing.reason.to_string() == "forbidden by policy at-least-ten"));
    // A permit that reads the size opaquely might allow a size where size 0 is refused: a
    // length is asked for where it applies, and elsewhere the refusal stands.
    let permit = compile(Some(
        r#"@id("reports-scaled")
permit(principal == Postern::Caller::"reports", action, resource)
    when { context.request_bytes * 2 > 100 };"#,
    ))
    .unwrap();
    assert!(permit
        .authorize_unsized(&request("reports", "stripe/get_charge"))
        .is_err_and(|refusing| !refusing.allowed));
    assert!(permit
        .authorize_unsized(&request("support", "twilio/send_message"))
        .is_ok_and(|decision| !decision.allowed));
    // The scope is the policy's principal, action and resource together.
    let for_support = r#"@id("support-scaled")
forbid(principal == Postern::Caller::"support", action, resource)
    when { context.request_bytes * 2 > 3000 };"#;
    let engine = compile(Some(for_support)).unwrap();
    assert!(engine
        .authorize_unsized(&request("checkout", "stripe/create_charge"))
        .is_ok_and(|decision| decision.allowed));
    assert!(engine
        .authorize_unsized(&request("support", "stripe/refund"))
        .is_err());
}

#[test]
fn custom_permit_can_grant() {
    let engine = compile(Some(
        r#"permit(principal == Postern::Caller::"reports", action, resource) when { context.method == "GET" };"#,
    ))
    .unwrap();
    check(
        &engine,
        AuthzRequest {
            method: "GET",
            ..request("reports", "twilio/send_message")
        },
        "granted by custom-0",
    );
    check(
        &engine,
        request("reports", "twilio/send_message"),
        "no grant for caller reports on twilio/send_message",
    );
}

#[test]
fn empty_custom_file_keeps_precomputed_mode() {
    let engine = compile(Some("// nothing here yet\n")).unwrap();
    assert!(!engine.depends_on_context());
    check(
        &engine,
        request("checkout", "stripe/create_charge"),
        "granted by grant-0",
    );
}

#[test]
fn cedar_text_shows_grants_and_custom_policies() {
    let text = compile(Some(NIGHT_AND_SIZE)).unwrap().cedar_text();
    for expected in [
        "@id(\"grant-0\")\npermit(principal == Postern::Caller::\"checkout\", action == Postern::Action::\"call\", resource == Postern::Operation::\"stripe/create_charge\");",
        "@id(\"grant-2\")\npermit(principal == Postern::Caller::\"admin\", action == Postern::Action::\"call\", resource in Postern::Integration::\"stripe\");",
        "[Postern::Operation::\"stripe/get_charge\", Postern::Operation::\"stripe/refund\"].contains(resource)",
        "@id(\"custom-0\")\nforbid(principal, action, resource) when { context.hour < 6 };",
        "@id(\"small-stripe-requests\")",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    // The text is valid Cedar that compiles to the same decisions.
    let engine = PolicyEngine::compile(
        &strings(&["checkout"]),
        &[IntegrationOps {
            integration: "stripe".to_owned(),
            operations: strings(&["create_charge"]),
        }],
        &[],
        Some(&text),
    )
    .unwrap();
    check(
        &engine,
        request("checkout", "stripe/create_charge"),
        "granted by grant-0",
    );
}

/// `expected` is a fragment of the error message.
#[track_caller]
fn check_error(custom_policies: &str, expected: &str) {
    let error = compile(Some(custom_policies)).expect_err("should not compile");
    let message = error.to_string();
    assert!(
        message.contains(expected),
        "expected {expected:?} in: {message}"
    );
}

#[test]
fn invalid_custom_policies_are_rejected_with_positions() {
    check_error(
        "permit(principal, action, resource);\nforbid(principal, action resource);",
        "custom policies do not parse: 2:",
    );
    check_error(
        "forbid(principal, action, resource) when { context.hourr < 6 };",
        "custom policies do not validate against the Postern schema: 1:",
    );
    check_error(
        "forbid(principal, action, resource) when { context.hourr < 6 };",
        "hourr",
    );
    check_error(
        "\n\n  forbid(principal, action, resource) when { context.method < 6 };",
        "3:",
    );
    check_error(
        "forbid(principal, action, resource in Postern::Integratoin::\"stripe\");",
        "Integratoin",
    );
    check_error(
        "@id(\"grant-0\") forbid(principal, action, resource);",
        "policy id `grant-0` is used twice",
    );
    check_error(
        "permit(principal == ?principal, action, resource);",
        "is a template",
    );
}

#[test]
fn grants_must_name_declared_things() {
    let compile_grant = |grant: GrantSpec| {
        PolicyEngine::compile(
            &strings(&["checkout"]),
            &[IntegrationOps {
                integration: "stripe".to_owned(),
                operations: strings(&["create_charge"]),
            }],
            &[grant],
            None,
        )
        .expect_err("should not compile")
        .to_string()
    };
    assert!(compile_grant(grant("nobody", "stripe", &["*"])).contains("caller `nobody`"));
    assert!(compile_grant(grant("checkout", "paypal", &["*"])).contains("integration `paypal`"));
    assert!(compile_grant(grant("checkout", "stripe", &["refund"])).contains("operation `refund`"));
    assert!(compile_grant(grant("checkout", "stripe", &[])).contains("lists no operations"));
}

/// A property over generated size rules: random `permit`/`forbid` policies whose conditions
/// combine comparisons of `context.request_bytes` with numbers (`<`, `<=`, `>`, `>=`, `==`,
/// `!=`, either side, under `&&`, `||`, `!`, `when`/`unless`). Whenever `authorize_unsized`
/// decides a request of unknown size, every size gives that answer (checked at the numbers,
/// around them, at random sizes and at the largest); whenever it asks for a length, some size
/// does answer differently.
#[test]
fn unsized_decisions_hold_for_every_size_under_generated_size_rules() {
    struct Fuzz(u64);
    impl Fuzz {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }
    let mut fuzz = Fuzz(0x0051_2e5e_ed01);
    let numbers = [0u64, 1, 7, 100, 999, 1000, 1001, 4096, 65_536, 1 << 40];
    let targets = [
        ("checkout", "stripe/create_charge"),
        ("checkout", "twilio/send_message"),
        ("support", "stripe/refund"),
        ("reports", "stripe/get_charge"),
    ];
    let mut decided_by_size = 0;
    for case in 0..300 {
        let condition = |fuzz: &mut Fuzz| {
            let number = numbers[fuzz.below(numbers.len() as u64) as usize];
            let operator = ["<", "<=", ">", ">=", "==", "!="][fuzz.below(6) as usize];
            match fuzz.below(2) {
                0 => format!("context.request_bytes {operator} {number}"),
                _ => format!("{number} {operator} context.request_bytes"),
            }
        };
        let mut policies = String::new();
        for index in 0..1 + fuzz.below(3) {
            let mut expression = condition(&mut fuzz);
            for _ in 0..fuzz.below(3) {
                let joined = ["&&", "||"][fuzz.below(2) as usize];
                let negated = if fuzz.below(3) == 0 { "!" } else { "" };
                expression = format!(
                    "({expression}) {joined} {negated}({})",
                    condition(&mut fuzz)
                );
            }
            let effect = ["forbid", "forbid", "permit"][fuzz.below(3) as usize];
            let clause = ["when", "unless"][fuzz.below(2) as usize];
            let scope = [
                "resource",
                r#"resource in Postern::Integration::"stripe""#,
                r#"resource == Postern::Operation::"twilio/send_message""#,
            ][fuzz.below(3) as usize];
            policies.push_str(&format!(
                "@id(\"rule-{index}\")\n{effect}(principal, action, {scope}) {clause} {{ {expression} }};\n"
            ));
        }
        let engine = compile(Some(&policies)).unwrap_or_else(|e| panic!("{e}\n{policies}"));
        let mut sizes: Vec<u64> = numbers
            .iter()
            .flat_map(|&n| [n.saturating_sub(1), n, n + 1])
            .chain([u64::MAX])
            .collect();
        sizes.extend((0..40).map(|_| fuzz.below(70_000)));
        for (caller, target) in targets {
            let unsized_answer = engine.authorize_unsized(&request(caller, target));
            let answers: Vec<bool> = sizes
                .iter()
                .map(|&request_bytes| {
                    engine
                        .authorize(&AuthzRequest {
                            request_bytes,
                            ..request(caller, target)
                        })
                        .allowed
                })
                .collect();
            match unsized_answer {
                Ok(decision) => assert!(
                    answers.iter().all(|&allowed| allowed == decision.allowed),
                    "case {case}, {caller} {target}: decided {} for an unknown size, but sizes answer differently\n{policies}",
                    decision.allowed
                ),
                Err(_) => {
                    decided_by_size += 1;
                    assert!(
                        answers.iter().any(|&allowed| allowed != answers[0]),
                        "case {case}, {caller} {target}: a length was asked for, but every size answers the same\n{policies}"
                    );
                }
            }
        }
    }
    assert!(decided_by_size > 50, "{decided_by_size}");
}

/// Cedar checks entity types, not ids: a custom policy naming a caller, integration or
/// operation the config does not have (renamed since, or mistyped), or comparing
/// `context.caller`/`.integration`/`.operation` with such a name, matches nothing. Each such
/// name is a note (`check` prints it, `serve` logs it); the config's own names are not.
#[test]
fn a_custom_policy_naming_what_the_config_does_not_have_is_noted() {
    let policies = r#"@id("renamed")
forbid(principal, action, resource in Postern::Integration::"stripe-eu")
    when { context.hour < 6 };
@id("typos")
forbid(principal == Postern::Caller::"chekout", action, resource == Postern::Operation::"stripe/create_refnd")
    when { context.operation == "refnd" || "suport" == context.caller || context.integration != "twilo" };
@id("known")
forbid(principal == Postern::Caller::"checkout", action, resource == Postern::Operation::"stripe/refund")
    when { context.operation == "refund" && context.caller != "support" && context.integration == "stripe" };
@id("sets")
forbid(principal, action, resource)
    when { ["checkout", "reprots"].contains(context.caller) || context.caller like "pay*" };
@id("elsewhere")
forbid(principal, action, resource in Postern::Integration::"twilio")
    when { context.operation == "refund" };
@id("elsewhere2")
forbid(principal, action, resource)
    when { context.integration == "stripe" && context.operation == "send_message" };
@id("known2")
forbid(principal, action, resource)
    when { ["checkout", "reports"].contains(context.caller) && context.operation like "create_*"
        && context.caller like "*port*" && context.integration like "tw*" && context.operation == "send_message" };"#;
    let notes = compile(Some(policies)).unwrap().notes();
    let named = |policy: &str, name: &str| {
        notes.iter().any(|note| {
            note.starts_with(&format!(
                "policy {policy} names {name}, which the config does not have"
            ))
        })
    };
    for (policy, name) in [
        ("renamed", r#"Postern::Integration::"stripe-eu""#),
        ("typos", r#"Postern::Caller::"chekout""#),
        ("typos", r#"Postern::Operation::"stripe/create_refnd""#),
        ("typos", r#"context.operation "refnd""#),
        ("typos", r#"context.caller "suport""#),
        ("typos", r#"context.integration "twilo""#),
        ("sets", r#"context.caller "reprots""#),
        ("sets", r#"context.caller like "pay*""#),
        // An operation of another integration than the one the policy is bound to.
        ("elsewhere", r#"context.operation "refund""#),
        ("elsewhere2", r#"context.operation "send_message""#),
    ] {
        assert!(named(policy, name), "{policy} {name}: {notes:#?}");
    }
    assert_eq!(notes.len(), 10, "{notes:#?}");
    // Patterns full of wildcards are matched in time (a recursive matcher took C(n+k, k) steps).
    let stars = format!("{}x", "*a".repeat(40));
    let policy = format!(
        "@id(\"stars\")\nforbid(principal, action, resource) when {{ context.caller like \"{stars}\" && context.operation like \"{}\" }};",
        "*".repeat(5000)
    );
    let started = std::time::Instant::now();
    let notes = compile(Some(&policy)).unwrap().notes();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(notes.len(), 1, "{notes:#?}");
    assert!(notes[0].contains("context.caller like"), "{notes:#?}");
}
