//! Detection cases, one line each: `check(input, hint, expected)` where `expected` lists
//! `(class, matched text)` in input order.

use postern_scan::{ContentTypeHint, Scanner};
use ContentTypeHint::{FormUrlEncoded as Form, Json, Text};

fn check(input: &str, hint: ContentTypeHint, expected: &[(&str, &str)]) {
    static SCANNER: std::sync::OnceLock<Scanner> = std::sync::OnceLock::new();
    let result = SCANNER
        .get_or_init(Scanner::default)
        .scan(input.as_bytes(), hint);
    let found: Vec<(String, String)> = result
        .findings
        .iter()
        .map(|f| (f.class.to_string(), input[f.start..f.end].to_owned()))
        .collect();
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(c, t)| (c.to_string(), t.to_string()))
        .collect();
    assert_eq!(found, expected, "input: {input}");
    for (class, _) in &expected {
        assert!(result.count(class) >= 1);
    }
}

#[test]
fn json_values_and_key_context() {
    check(
        r#"{"email":"jane.doe@example.com","id":"cus_9s6XKzkNRiz8i3"}"#,
        Json,
        &[("pii.email", "jane.doe@example.com")],
    );
    check(
        r#"{"phone":"4155552671"}"#,
        Json,
        &[("pii.phone", "4155552671")],
    );
    check(r#"{"note":"4155552671"}"#, Json, &[]);
    check(
        r#"{"ssn":"123456789","ssn_last4":"6789"}"#,
        Json,
        &[("pii.us_ssn", "123456789")],
    );
    check(
        r#"{"dateOfBirth":"1985-04-12","created":"1985-04-12"}"#,
        Json,
        &[("pii.date_of_birth", "1985-04-12")],
    );
    check(
        r#"{"client_secret":"q8Z!x2Lp#v9TmWc4"}"#,
        Json,
        &[("secret.generic", "q8Z!x2Lp#v9TmWc4")],
    );
    check(r#"{"password":"password"}"#, Json, &[]);
    check(
        r#"{"prompt_tokens":1234567890123,"token_type":"bearer","max_tokens":4096}"#,
        Json,
        &[],
    );
    check(
        r#"{"idempotency_key":"9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f"}"#,
        Json,
        &[],
    );
    check(
        r#"{"api_key":"sk_live_51H8abcdefghijklmnopqrstu"}"#,
        Json,
        &[("secret.stripe_key", "sk_live_51H8abcdefghijklmnopqrstu")],
    );
    check(
        r#"{"body":"{\"password\":\"Zx81!kq0PwLm2#rT\"}"}"#,
        Json,
        &[("secret.generic", "Zx81!kq0PwLm2#rT")],
    );
    check(
        r#"{"msg":"login failed password=Zx81!kq0PwLm2#rT attempts=3"}"#,
        Json,
        &[("secret.generic", "Zx81!kq0PwLm2#rT")],
    );
}

#[test]
fn keys_are_matched_by_their_words_wherever_they_stand() {
    let secret = "Zx81!kq0PwLm2#rT";
    // Any case style, spaces around the colon, a long key, a key that is the first thing in
    // the body or comes after a long value.
    for body in [
        format!(r#"{{"x-Api-Key":"{secret}"}}"#),
        format!(r#"{{"API_KEY" : "{secret}"}}"#),
        format!(r#"{{"stripeSecretKey":"{secret}"}}"#),
        format!(r#"{{"the_user_account_primary_password_v2":"{secret}"}}"#),
        format!(
            r#"{{"note":"{}","Authorization":"Bearer {secret}"}}"#,
            "x".repeat(300)
        ),
        format!(r#"{{"log":"db=main password={secret} retries=3"}}"#),
        format!(r#"{{"body":"{{\"token\": \"{secret}\"}}"}}"#),
    ] {
        check(&body, Json, &[("secret.generic", secret)]);
    }
    check(
        &format!("user=ada&Client-Secret={secret}"),
        Form,
        &[("secret.generic", secret)],
    );
    check(
        &format!("retrying, token: {secret}"),
        Text,
        &[("secret.generic", secret)],
    );
    // Words, not substrings: no key here holds `token`, `pass` or `secret` as a word.
    check(
        &format!(r#"{{"max_tokens":"{secret}","passenger":"{secret}","secretary":"{secret}"}}"#),
        Json,
        &[],
    );
    // Not keys: a time, a URL, a value that merely contains a key word.
    check(
        &format!(
            r#"{{"at":"2024-05-01T10:30:00Z","url":"https://x.example/token","m":"token {secret}"}}"#
        ),
        Json,
        &[],
    );
}

#[test]
fn numbers_with_validators() {
    check(
        "card 4111 1111 1111 1111 ok",
        Text,
        &[("payment.card", "4111 1111 1111 1111")],
    );
    check("card 4111 1111 1111 1112 ok", Text, &[]);
    check(
        r#"{"n":4242424242424242}"#,
        Json,
        &[("payment.card", "4242424242424242")],
    );
    check("order_4242424242424242 ORD-4242424242424242", Text, &[]);
    check(
        "iban DE89 3704 0044 0532 0130 00.",
        Text,
        &[("payment.iban", "DE89 3704 0044 0532 0130 00")],
    );
    check(
        "iban GB82WEST12345698765432",
        Text,
        &[("payment.iban", "GB82WEST12345698765432")],
    );
    check("iban GB82WEST12345698765433", Text, &[]);
    check(
        "ssn 123-45-6789, not 666-45-6789 or 2024-01-15",
        Text,
        &[("pii.us_ssn", "123-45-6789")],
    );
    check(
        "call (415) 555-2671 or +44 20 7946 0958 or 415.555.2671",
        Text,
        &[
            ("pii.phone", "(415) 555-2671"),
            ("pii.phone", "+44 20 7946 0958"),
            ("pii.phone", "415.555.2671"),
        ],
    );
    check(
        "To=%2B14155552671&Body=hi",
        Form,
        &[("pii.phone", "%2B14155552671")],
    );
    check(
        "from 203.0.113.7 and 2001:db8::8a2e:370:7334 at 10:00:00, v1.2.3.4 Chrome/124.0.0.0",
        Text,
        &[
            ("pii.ip_address", "203.0.113.7"),
            ("pii.ip_address", "2001:db8::8a2e:370:7334"),
        ],
    );
    check("uuid 550e8400-e29b-41d4-a716-446655440000 sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", Text, &[]);
}

#[test]
fn secrets_by_shape() {
    check(
        "k=AKIAIOSFODNN7EXAMPLE.",
        Text,
        &[("secret.aws_access_key", "AKIAIOSFODNN7EXAMPLE")],
    );
    check(
        "t ghp_1234567890abcdefghijABCDEFGHIJ123456 x",
        Text,
        &[(
            "secret.github_token",
            "ghp_1234567890abcdefghijABCDEFGHIJ123456",
        )],
    );
    check(
        "xoxb-12345678901-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        Text,
        &[(
            "secret.slack_token",
            "xoxb-12345678901-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        )],
    );
    check(
        "pk_live_51H8abcdefghijklmnopqrstu is publishable",
        Text,
        &[],
    );
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    check(
        &format!(r#"{{"msg":"Bearer {jwt}"}}"#),
        Json,
        &[("secret.jwt", jwt)],
    );
    let pem = r"-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n-----END RSA PRIVATE KEY-----";
    check(
        &format!(r#"{{"key":"{pem}"}}"#),
        Json,
        &[("secret.private_key", pem)],
    );
    check(
        r"-----BEGIN CERTIFICATE-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n-----END CERTIFICATE-----",
        Json,
        &[],
    );
    let openai = "sk-proj-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLT3BlbkFJabcdefghijklmnopqrstuvwxyz0123456789";
    check(
        &format!("use {openai}"),
        Text,
        &[("secret.openai_key", openai)],
    );
}

#[test]
fn json_escapes_do_not_leak_into_offsets() {
    check(
        r#"{"m":"line one\njane@example.com"}"#,
        Json,
        &[("pii.email", "jane@example.com")],
    );
    check(
        "contact=jane.doe%40example.com&x=1",
        Form,
        &[("pii.email", "jane.doe%40example.com")],
    );
}

#[test]
fn ipv4_octets_follow_the_address_parser() {
    check(
        "from 10.1.2.3 today",
        Text,
        &[("pii.ip_address", "10.1.2.3")],
    );
    // A leading zero is not an IPv4 octet (the standard parser refuses it), nor is 256.
    check("from 010.1.2.3 today", Text, &[]);
    check("from 10.1.2.256 today", Text, &[]);
}

/// A form sent with no `Content-Type` (which Rack reads as a form) or another one is sniffed as
/// text: its pairs are scanned decoded as a form's are.
#[test]
fn form_pairs_in_text_are_scanned_decoded() {
    check(
        "amount=100&card=4111+1111+1111+1111&cvc=123",
        Text,
        &[("payment.card", "4111+1111+1111+1111")],
    );
    check(
        "c=%34111111111111111",
        Text,
        &[("payment.card", "%34111111111111111")],
    );
    check(
        "card=4111%201111%201111%201111",
        ContentTypeHint::Unknown,
        &[("payment.card", "4111%201111%201111%201111")],
    );
    // Text with no pairs is not decoded: `+` and `%` stay what they are.
    check(
        "call +1 415 555 2671 now",
        Text,
        &[("pii.phone", "+1 415 555 2671")],
    );
}

#[test]
fn form_values_are_scanned_decoded() {
    // A form encodes a space as `+` or `%20`: the values below are found where they stand,
    // encoded (so a redaction covers the encoded bytes).
    check(
        "amount=100&card=4111+1111+1111+1111&cvc=123",
        Form,
        &[("payment.card", "4111+1111+1111+1111")],
    );
    check(
        "card=4111%201111%201111%201111",
        Form,
        &[("payment.card", "4111%201111%201111%201111")],
    );
    check(
        "phone=%2B1+415+555+2671",
        Form,
        &[("pii.phone", "%2B1+415+555+2671")],
    );
    check(
        "iban=GB82+WEST+1234+5698+7654+32&currency=gbp",
        Form,
        &[("payment.iban", "GB82+WEST+1234+5698+7654+32")],
    );
    // A value holding an encoded `card=…`.
    check(
        "note=a%26card%3D4111+1111+1111+1111",
        Form,
        &[("payment.card", "4111+1111+1111+1111")],
    );
    // An AWS secret access key's `/` and `+`, encoded, next to its key id.
    check(
        "id=AKIAIOSFODNN7EXAMPLE&aws_secret_access_key=wJalrXUtnFEMI%2FK7MDENG%2FbPxRfiCYEXAMPLEKEY",
        Form,
        &[
            ("secret.aws_access_key", "AKIAIOSFODNN7EXAMPLE"),
            ("secret.generic", "wJalrXUtnFEMI%2FK7MDENG%2FbPxRfiCYEXAMPLEKEY"),
        ],
    );
    // A secret under a secret's key is judged as sent: its `+`, `%20` or `%26` is part of it.
    for secret in [
        "Xk9+mQ2vL7pZq",
        "Xk9%26mQ2vL7pZ",
        "Xk9%20mQ2vL7pZq",
        "p%C3%A4ssW0rd%21xyz",
    ] {
        check(
            &format!("user=ada&client_secret={secret}&x=1"),
            Form,
            &[("secret.generic", secret)],
        );
    }
    // Only the pairs holding `+` or `%` are decoded: what they hold is found where it stands,
    // whatever plain pairs lie between them.
    check(
        "phone=%2B1+415+555+2671&amount=100&currency=usd&metadata%5Bcard%5D=4111+1111+1111+1111&capture=true",
        Form,
        &[
            ("pii.phone", "%2B1+415+555+2671"),
            ("payment.card", "4111+1111+1111+1111"),
        ],
    );
    // Outside a form too, text holding pairs is read as a form may be read (see
    // form_pairs_in_text_are_scanned_decoded); JSON is not.
    check(
        "card=4111+1111+1111+1111",
        Text,
        &[("payment.card", "4111+1111+1111+1111")],
    );
    check(r#"{"card":"4111+1111+1111+1111"}"#, Json, &[]);
}

#[test]
fn a_form_value_is_redacted_over_its_encoding() {
    let input = b"amount=100&card=4111%201111+1111+1111&cvc=123";
    let result = Scanner::default().scan(input, Form);
    let redacted = postern_scan::redact(input, &result.findings);
    let masked = "*".repeat("4111%201111+1111+1111".len());
    assert_eq!(
        String::from_utf8(redacted).unwrap(),
        format!("amount=100&card={masked}&cvc=123")
    );
    // Plain pairs between two decoded ones, and a finding that ends its pair: each mask covers
    // its own value's encoding and nothing of the pairs after it.
    let input = b"to=%2B1+415+555+2671&amount=100&cvc=123&card=4111%201111+1111+1111";
    let result = Scanner::default().scan(input, Form);
    let redacted = postern_scan::redact(input, &result.findings);
    assert_eq!(
        String::from_utf8(redacted).unwrap(),
        format!(
            "to={}&amount=100&cvc=123&card={masked}",
            "*".repeat("%2B1+415+555+2671".len())
        )
    );
}

/// Card groups joined by `.`, `/` or `_` as well as spaces and dashes; the issuer prefix and
/// Luhn still decide, and only a card is read from a token joined by `/` or `_`.
#[test]
fn card_groups_joined_by_dots_slashes_and_underscores() {
    for card in [
        "4111.1111.1111.1111",
        "4111/1111/1111/1111",
        "4111_1111_1111_1111",
        "3782_822463_10005",
        "5555.5555.5555.4444",
    ] {
        check(&format!("card {card} ok"), Text, &[("payment.card", card)]);
        check(
            &format!(r#"{{"card":"{card}"}}"#),
            Json,
            &[("payment.card", card)],
        );
    }
    // Luhn still gates; mixed joiners are not a card's groups.
    check("card 4111.1111.1111.1112 ok", Text, &[]);
    check("card 4111_1111_1111_1112 ok", Text, &[]);
    check("card 4111/1111-1111/1111 ok", Text, &[]);
    check("card 4111_1111 1111_1111 ok", Text, &[]);
    // Glued to a word before it, as any number is (`order_4242…`, a path segment).
    check(
        "see cards/4111/1111/1111/1111 and id_4111_1111_1111_1111",
        Text,
        &[],
    );
    // Dates, file-name stamps and versions joined the same way are not phones or cards.
    check(
        "on 12/31/1990 and 2024_01_15_123456 build 4111.1111.1111",
        Text,
        &[],
    );
    // A phone number followed by `/` keeps its end.
    check(
        "call +1 415 555 2671/2672 now",
        Text,
        &[("pii.phone", "+1 415 555 2671")],
    );
    check(
        "call 415-555-2671/2 now",
        Text,
        &[("pii.phone", "415-555-2671")],
    );
}

/// A card number sent as a JSON number: an integer, or the floating-point forms serialisers
/// that hold it in a double write (Python `….0`, Java `4.111111111111111E15`). Only a number
/// standing as a JSON value whose value is an integer of 13–19 digits counts.
#[test]
fn card_numbers_as_json_numbers() {
    for number in [
        "4111111111111111",
        "4111111111111111.0",
        "4111111111111111.000",
        "4.111111111111111e15",
        "4.111111111111111E+15",
        "4.111111111111111E15",
        "5.555555555554444e15",
        "0.4111111111111111e16",
        "41111111111111110e-1",
    ] {
        for body in [
            format!(r#"{{"card":{number}}}"#),
            format!(r#"{{"card": {number} , "n":1}}"#),
            format!(r#"[1,{number}]"#),
        ] {
            check(&body, Json, &[("payment.card", number)]);
        }
    }
    // Not an integer, not a card's length, Luhn-invalid, not a JSON value, or signed.
    for body in [
        r#"{"x":4111111111111111.5}"#,
        r#"{"x":4.111111111111111e14}"#,
        r#"{"x":4.111111111111111e20}"#,
        r#"{"x":4.111111111111112e15}"#,
        r#"{"x":"v4.111111111111111e15"}"#,
        r#"{"x":"4.111111111111111e15x"}"#,
        r#"{"x":-4.111111111111111e15}"#,
        r#"{"amount":19.99,"rate":1.5e3,"big":1.0e300}"#,
    ] {
        check(body, Json, &[]);
    }
    // Masked as a number, so the document still parses.
    let input = br#"{"card":4.111111111111111E15}"#;
    let result = Scanner::default().scan(input, Json);
    assert_eq!(
        postern_scan::redact(input, &result.findings),
        br#"{"card":9.999999999999999E99}"#
    );
}

/// An IBAN written all in lower case is an IBAN; mod-97 still gates, and a mixed-case token is
/// not read as one.
#[test]
fn lower_case_ibans() {
    for iban in [
        "de89370400440532013000",
        "de89 3704 0044 0532 0130 00",
        "gb82west12345698765432",
        "gb82 west 1234 5698 7654 32",
        "fr1420041010050500013m02606",
    ] {
        check(&format!("iban {iban}."), Text, &[("payment.iban", iban)]);
        check(
            &format!(r#"{{"iban":"{iban}"}}"#),
            Json,
            &[("payment.iban", iban)],
        );
    }
    check(
        "iban=gb82+west+1234+5698+7654+32&x=1",
        Form,
        &[("payment.iban", "gb82+west+1234+5698+7654+32")],
    );
    for negative in [
        "de89370400440532013001",
        "gb82west12345698765433",
        "gb82WEST12345698765432",
        "De89370400440532013000",
        "xde89370400440532013000",
        "de89370400440532013000x",
        "sha256 ab12cdef34 utf8 v12",
    ] {
        check(&format!("iban {negative}."), Text, &[]);
    }
}

/// An international number dialled with `00` for `+`: grouped, with an assigned country code
/// as (or right after) the `00` group.
#[test]
fn international_numbers_with_00_for_plus() {
    for phone in [
        "0044 20 7946 0958",
        "00 44 20 7946 0958",
        "001 415 555 2671",
        "001-415-555-2671",
        "0049 30 12345678",
        "0033 1 23 45 67 89",
        "00353 1 234 5678",
        "0044.20.7946.0958",
    ] {
        check(&format!("call {phone} now"), Text, &[("pii.phone", phone)]);
        check(
            &format!(r#"{{"contact":"{phone}"}}"#),
            Json,
            &[("pii.phone", phone)],
        );
    }
    // Ungrouped (a zero-padded id), an unassigned code, too few or too many digits, a `000`.
    for negative in [
        "00442079460958",
        "0012 3456 7890",
        "0028 123 456 789",
        "0044 20 79",
        "0044 20 7946 0958 1234 5678",
        "000 44 20 7946 0958",
        "0012 3456 7890 1234",
    ] {
        check(&format!("ref {negative} ok"), Text, &[]);
    }
}

/// A value under a secret's (or a phone's, an SSN's…) key may be an array: each string or
/// number in it is the key's value.
#[test]
fn arrays_under_a_key_are_its_values() {
    let secret = "Zx81!kq0PwLm2#rT";
    check(
        &format!(r#"{{"password": ["{secret}"]}}"#),
        Json,
        &[("secret.generic", secret)],
    );
    check(
        &format!(r#"{{"tokens":1,"api_key":[ "{secret}" , "q8Z!x2Lp#v9TmWc4" ],"n":2}}"#),
        Json,
        &[
            ("secret.generic", secret),
            ("secret.generic", "q8Z!x2Lp#v9TmWc4"),
        ],
    );
    check(
        r#"{"phone":["4155552671", 4155552672],"ssn":["123456789"]}"#,
        Json,
        &[
            ("pii.phone", "4155552671"),
            ("pii.phone", "4155552672"),
            ("pii.us_ssn", "123456789"),
        ],
    );
    // The entropy floor still holds; an array of objects is read by the keys inside it.
    check(r#"{"password":["password","hunter2",""]}"#, Json, &[]);
    check(
        &format!(r#"{{"secrets":[{{"name":"db","value":"{secret}"}}],"secret":[[1]]}}"#),
        Json,
        &[],
    );
    // Masked element by element, the array kept.
    let input = format!(r#"{{"password":["{secret}"]}}"#);
    let result = Scanner::default().scan(input.as_bytes(), Json);
    assert_eq!(
        String::from_utf8(postern_scan::redact(input.as_bytes(), &result.findings)).unwrap(),
        format!(r#"{{"password":["{}"]}}"#, "*".repeat(secret.len()))
    );
}

/// Full-width forms (NFKC-folded) and HTML numeric character references spelling digits or
/// `@`: found, over the bytes as sent.
#[test]
fn full_width_digits_and_character_references() {
    check(
        "card ４１１１ １１１１ １１１１ １１１１ ok",
        Text,
        &[("payment.card", "４１１１ １１１１ １１１１ １１１１")],
    );
    check(
        r#"{"card":"４１１１－１１１１－１１１１－１１１１","tel":"＋４４　２０　７９４６　０９５８"}"#,
        Json,
        &[
            ("payment.card", "４１１１－１１１１－１１１１－１１１１"),
            ("pii.phone", "＋４４　２０　７９４６　０９５８"),
        ],
    );
    check(
        "電話０３－１２３４－５６７８まで",
        Text,
        &[("pii.phone", "０３－１２３４－５６７８")],
    );
    check(
        "iban ＤＥ８９３７０４００４４０５３２０１３０００ ok",
        Text,
        &[(
            "payment.iban",
            "ＤＥ８９３７０４００４４０５３２０１３０００",
        )],
    );
    check(
        "mail ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ now",
        Text,
        &[("pii.email", "ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ")],
    );
    let entities = "&#52;&#49;&#49;&#49;&#32;&#x31;&#x31;&#x31;&#x31;&#32;1111&#32;1111";
    check(
        &format!(r#"{{"note":"card {entities}"}}"#),
        Json,
        &[("payment.card", entities)],
    );
    check(
        "to jane&#64;example.com",
        Text,
        &[("pii.email", "jane&#64;example.com")],
    );
    // A finding as sent is reported once; Luhn still gates; full-width punctuation and
    // references of other characters alone are not a reason to look again.
    check(
        "４１１１ 4111 1111 1111 1111 and ４１１１ １１１１ １１１１ １１１２",
        Text,
        &[("payment.card", "4111 1111 1111 1111")],
    );
    check("価格，数量：なし &#39;x&#39; &#0052;", Text, &[]);
    // In a form, after percent-decoding.
    check(
        "card=%EF%BC%94111+1111+1111+1111&x=1",
        Form,
        &[("payment.card", "%EF%BC%94111+1111+1111+1111")],
    );
    // Masked over the whole spelling, the output still valid UTF-8.
    let input = "c ４１１１１１１１１１１１１１１１ d";
    let result = Scanner::default().scan(input.as_bytes(), Text);
    let redacted = postern_scan::redact(input.as_bytes(), &result.findings);
    assert_eq!(
        String::from_utf8(redacted).unwrap(),
        format!("c {} d", "*".repeat(48))
    );
}

/// Addresses with letters and digits of any script (internationalised local parts and
/// domains).
#[test]
fn internationalised_email_addresses() {
    for email in [
        "jörg@bücher.de",
        "用户@例子.广告",
        "josé.garcía@correo.es",
        "владимир@пример.рф",
        "अजय@डाटा.भारत",
        "jane@xn--bcher-kva.de",
        "ada@example.com",
    ] {
        check(&format!("mail {email} now"), Text, &[("pii.email", email)]);
        check(
            &format!(r#"{{"to":"{email}","n":1}}"#),
            Json,
            &[("pii.email", email)],
        );
        check(&format!("（{email}）。"), Text, &[("pii.email", email)]);
    }
    // Glued to letters of a script without spaces, the local part runs back to the last
    // non-letter (at most 64 characters): what is masked covers the address and more.
    check(
        "请联系用户@例子.广告。",
        Text,
        &[("pii.email", "请联系用户@例子.广告")],
    );
    // Still no address: a top-level domain of one letter or with a digit, an `@` mention.
    check(
        "a jörg@bücher.d b jörg@bücher.de1 @用户 用户@例子",
        Text,
        &[],
    );
}

/// Bodies a caller can send to make a scan cost more than linear time: many private-key
/// headers each followed by footers that are not, a key repeated after every `=` (each value
/// running on), tens of thousands of key-context findings (plain, with a character reference,
/// which adds a folded reading, or found only with JSON escapes undone), long runs of blanks
/// before colons. Each scans in well under the bound (a few tenths
/// of a second in a debug build; tens of seconds each before the fixes), and finds what it
/// found before.
#[test]
fn adversarial_bodies_scan_in_linear_time() {
    let scanner = Scanner::default();
    let body = |unit: &str, size: usize| unit.repeat(size / unit.len() + 1)[..size].to_string();
    let cases = [
        (
            body("-----BEGIN PRIVATE KEY-----é-----END", 512 * 1024),
            None,
        ),
        (body("pwd=", 256 * 1024), None),
        (
            body("dob=1990-01-01&", 1024 * 1024),
            Some(("pii.date_of_birth", 69_905)),
        ),
        (body("dob=1990-01-01&#49;&", 512 * 1024), None),
        // Long runs of blanks before colons: each run is walked back once, by its own colon,
        // however long it is, and a run of colons after one walks it once in all.
        (
            format!(
                r#"{{"password"{}:"Xk9mQ2vL7pZr4Tq!"}}"#,
                " ".repeat(1024 * 1024)
            ),
            Some(("secret.generic", 1)),
        ),
        (
            body(
                &format!(r#"{{"password"{}:"#, " \n".repeat(2048)),
                1024 * 1024,
            ),
            None,
        ),
        (
            format!("{}{}", " ".repeat(512 * 1024), ":".repeat(512 * 1024)),
            None,
        ),
        // A JSON body whose escapes are undone: tens of thousands of findings only the copy
        // holds, each mapped back.
        (
            body(r#"{"dob":"01\/02\/1980"},"#, 1024 * 1024),
            Some(("pii.date_of_birth", 45_000)),
        ),
    ];
    for (input, expected) in cases {
        let started = std::time::Instant::now();
        let result = scanner.scan(input.as_bytes(), ContentTypeHint::Unknown);
        let took = started.elapsed();
        assert!(
            took < std::time::Duration::from_secs(10),
            "{} bytes of {:?}… took {took:?}",
            input.len(),
            &input[..24]
        );
        if let Some((class, count)) = expected {
            assert!(result.count(class) >= count, "{:?}", result.class_counts);
        }
    }
}

/// The private-key findings of scanning `body` (as text), as spans.
fn private_keys(body: &[u8]) -> Vec<(usize, usize)> {
    Scanner::default()
        .scan(body, Text)
        .findings
        .iter()
        .filter(|finding| &*finding.class == "secret.private_key")
        .map(|finding| (finding.start, finding.end))
        .collect()
}

/// A PEM key of the form the scanner finds: header, 20 lines of base64, footer.
fn pem_key() -> String {
    let line = "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n";
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}-----END PRIVATE KEY-----",
        line.repeat(20)
    )
}

/// Bodies of 4 MiB that are nothing but private-key headers with no footer within reach
/// (up to 155,000 of them): bare, each followed by `é`, by a byte that is not UTF-8, or by
/// `é-----END`, which is no footer. Each header is decided in a small constant time (the scan
/// remembers where the next footer and the next invalid byte lie, rather than searching the
/// 16 KiB after every header again), so each body scans in about the time of the same body
/// with `KEY` spelled `KEX`, whose headers are no headers: about 0.2 s each in a debug build,
/// where searched again per header the bare headers took 0.5 s, the `é` ones 1.2 s and the
/// `é-----END` ones 6 s.
#[test]
fn footerless_private_key_headers_cost_a_constant_each() {
    let scanner = Scanner::default();
    let size = 4 * 1024 * 1024;
    let body = |unit: &[u8]| -> Vec<u8> { unit.repeat(size / unit.len() + 1)[..size].to_vec() };
    // The least of three scans, so that what else the machine runs meanwhile counts little.
    let scan_time = |input: &[u8]| {
        (0..3)
            .map(|_| {
                let started = std::time::Instant::now();
                let result = scanner.scan(input, ContentTypeHint::Unknown);
                let took = started.elapsed();
                assert_eq!(result.count("secret.private_key"), 0);
                took
            })
            .min()
            .unwrap()
    };
    for unit in [
        &b"-----BEGIN PRIVATE KEY-----"[..],
        "-----BEGIN PRIVATE KEY-----é".as_bytes(),
        b"-----BEGIN PRIVATE KEY-----\xff",
        "-----BEGIN PRIVATE KEY-----é-----END".as_bytes(),
    ] {
        // The same with `KEY` spelled `KEX`, its last byte at 21.
        let mut no_header = unit.to_vec();
        no_header[21] = b'X';
        let (took, baseline) = (scan_time(&body(unit)), scan_time(&body(&no_header)));
        // Four times the scan with no headers: loose enough for a loaded machine; searching
        // each header's window took 7 and 35 times as long for the second and fourth bodies.
        assert!(
            took < baseline * 4,
            "{size} bytes of {:?} took {took:?}, {baseline:?} with no headers",
            String::from_utf8_lossy(unit)
        );
    }
}

/// A key after many headers with no footer of their own is found: on its own when the
/// headers are out of reach (the match ends within 16 KiB of its header) or cut off by a
/// byte that is not UTF-8, and from the first header within reach of its footer when they
/// are not, as the regex reads it.
#[test]
fn a_private_key_after_footerless_headers_is_found() {
    let key = pem_key();
    let headers = "-----BEGIN PRIVATE KEY-----".repeat(40_000);
    let filler = "lorem ipsum ".repeat(2 * 1024);

    let body = format!("{headers}{filler}{key}");
    let key_start = headers.len() + filler.len();
    assert_eq!(private_keys(body.as_bytes()), [(key_start, body.len())]);

    let mut body = headers.clone().into_bytes();
    body.push(0xff);
    body.extend_from_slice(key.as_bytes());
    assert_eq!(
        private_keys(&body),
        [(headers.len() + 1, body.len())],
        "after a byte that is not UTF-8"
    );

    // With no gap the match starts at the first header whose 16 KiB reach the footer.
    let body = format!("{headers}{key}");
    let header = "-----BEGIN PRIVATE KEY-----".len();
    let first = (0..=headers.len())
        .step_by(header)
        .find(|&start| body.len() - start <= 16 * 1024)
        .unwrap();
    assert_eq!(private_keys(body.as_bytes()), [(first, body.len())]);
}

/// A match must end within 16 KiB of where its header starts: a footer ending at that bound
/// is found, one ending a byte beyond it is not, and then a later header within reach of
/// the same footer is where the match starts.
#[test]
fn a_private_key_footer_beyond_16_kib_is_not_reached() {
    let header = "-----BEGIN PRIVATE KEY-----\n";
    let footer = "\n-----END PRIVATE KEY-----";
    let fill = |len: usize| "A".repeat(len);
    let reach = 16 * 1024;

    let body = format!(
        "{header}{}{footer}",
        fill(reach - header.len() - footer.len())
    );
    assert_eq!(body.len(), reach);
    assert_eq!(private_keys(body.as_bytes()), [(0, reach)]);

    let body = format!(
        "{header}{}{footer}",
        fill(reach + 1 - header.len() - footer.len())
    );
    assert_eq!(private_keys(body.as_bytes()), []);

    // Two headers, the first out of reach of the footer, the second within it; then a third
    // body whose footer neither reaches.
    let second = 10 * 1024;
    let body = format!(
        "{header}{}{header}{}{footer} {header}{}{footer}",
        fill(second - header.len()),
        fill(reach - header.len() - footer.len() - 100),
        fill(reach),
    );
    assert_eq!(
        private_keys(body.as_bytes()),
        [(second, second + reach - 100)]
    );
}

/// However many blanks stand between a key's closing quote and its `:`, the key is read.
#[test]
fn any_blanks_between_a_key_and_its_colon() {
    let secret = "Xk9mQ2vL7pZr4Tq!";
    for blanks in [" ".repeat(100), "\r\n\t ".repeat(100)] {
        check(
            &format!(r#"{{"password"{blanks}:"{secret}"}}"#),
            Json,
            &[("secret.generic", secret)],
        );
        check(
            &format!(r#"{{"body":"{{\"token\"{blanks}:\"{secret}\"}}"}}"#),
            Json,
            &[("secret.generic", secret)],
        );
    }
}

/// JSON's `\/` and `\uXXXX` escapes (PHP's `json_encode` writes every `/` as `\/`; Python's
/// `json.dumps` writes anything outside ASCII as `\uXXXX`) are undone in a copy, and what it
/// holds is found over the whole escaped spelling.
#[test]
fn json_slash_and_unicode_escapes_are_undone() {
    let hook = r"T0A1B2C3D\/B0E1F2G3H\/q8Zx2Lpv9TmWc4Rk7Yn3Hs5J";
    check(
        &format!(r#"{{"url":"https:\/\/hooks.slack.com\/services\/{hook}"}}"#),
        Json,
        &[("secret.slack_token", hook)],
    );
    check(
        r#"{"dob":"01\/02\/1980"}"#,
        Json,
        &[("pii.date_of_birth", r"01\/02\/1980")],
    );
    let card = r"\u0034\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031\u0031";
    check(
        &format!(r#"{{"card":"{card}"}}"#),
        Json,
        &[("payment.card", card)],
    );
    check(
        r#"{"to":"ada\u0040example.com"}"#,
        ContentTypeHint::Unknown,
        &[("pii.email", r"ada\u0040example.com")],
    );
    // Full-width digits as escapes: undone, then folded.
    let wide = r"\uff14\uff11\uff11\uff11 \uFF11\uFF11\uFF11\uFF11 \uff11\uff11\uff11\uff11 \uff11\uff11\uff11\uff11";
    check(
        &format!(r#"{{"note":"card {wide}"}}"#),
        Json,
        &[("payment.card", wide)],
    );
    // Kept as sent: an escaped backslash before `u0034`, and a `\u0022`, which would end the
    // string in the copy.
    check(r#"{"path":"C:\\u0034111111111111111"}"#, Json, &[]);
    check(r#"{"password\u0022:"Zx81!kq0PwLm2#rT"}"#, Json, &[]);
    // Masked over the whole spelling, the document still valid.
    let input = format!(r#"{{"card":"{card}","n":1}}"#);
    let result = Scanner::default().scan(input.as_bytes(), Json);
    assert_eq!(
        String::from_utf8(postern_scan::redact(input.as_bytes(), &result.findings)).unwrap(),
        format!(r#"{{"card":"{}","n":1}}"#, "*".repeat(card.len()))
    );
}

/// A body with no `Content-Type` that starts with `[` or `{` is sniffed as JSON, but a server
/// reading it as a form (Rack) decodes its pairs: they are scanned decoded too.
#[test]
fn a_form_sniffed_as_json_is_scanned_decoded() {
    let card = "%34%31%31%31%31%31%31%31%31%31%31%31%31%31%31%31";
    check(
        &format!("[x]=1&card={card}"),
        ContentTypeHint::Unknown,
        &[("payment.card", card)],
    );
    check(
        "{a}=1&card=4111+1111+1111+1111",
        ContentTypeHint::Unknown,
        &[("payment.card", "4111+1111+1111+1111")],
    );
    // A body declared JSON is not.
    check(&format!("[x]=1&card={card}"), Json, &[]);
}

/// A form value holding a JSON document (Slack's `payload=…`), as it stands or
/// percent-encoded: its `"key":` pairs are read as JSON's are.
#[test]
fn json_in_a_form_value_is_read_as_json() {
    let secret = "Zx81!kq0PwLm2#rT";
    check(
        &format!(r#"payload={{"password":"{secret}"}}"#),
        Form,
        &[("secret.generic", secret)],
    );
    check(
        "payload=%7B%22password%22%3A%22Zx81%21kq0PwLm2%23rT%22%7D",
        Form,
        &[("secret.generic", "Zx81%21kq0PwLm2%23rT")],
    );
    check(
        "token=abc&payload=%7B%22text%22%3A+%22hi%22%2C+%22api_key%22%3A+%22Zx81%21kq0PwLm2%23rT%22%7D",
        Form,
        &[("secret.generic", "Zx81%21kq0PwLm2%23rT")],
    );
}
