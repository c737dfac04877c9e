//! Which operation does a request hit? One line per case.

use postern_policy::{OperationTable, PathTemplate, PolicyError};

/// Operations of a made-up integration mixing Stripe and Twilio styles.
fn table() -> OperationTable {
    OperationTable::new([
        ("list_charges", "GET", "/v1/charges"),
        ("create_charge", "POST", "/v1/charges"),
        ("get_charge", "GET", "/v1/charges/{id}"),
        ("search_charges", "GET", "/v1/charges/search"),
        ("get_customer", "GET", "/v1/customers/{id}"),
        (
            "send_message",
            "POST",
            "/2010-04-01/Accounts/{AccountSid}/Messages.json",
        ),
        (
            "get_message",
            "GET",
            "/2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json",
        ),
        (
            "get_media",
            "GET",
            "/2010-04-01/Accounts/{AccountSid}/Messages/{Sid}/Media/{MediaSid}",
        ),
        ("versioned", "GET", "/api/v{version}-beta/items"),
        ("head_file", "HEAD", "/files/{id}"),
        ("get_file", "GET", "/files/{id}"),
        ("root", "GET", "/"),
    ])
    .expect("valid table")
}

/// `expected` is the operation id, or `-` for no match.
#[track_caller]
fn check(method: &str, path: &str, expected: &str) {
    let table = table();
    let found = table.find(method, path).map_or("-", |matched| matched.id);
    assert_eq!(found, expected, "{method} {path}");
}

#[test]
fn literal_paths_and_methods() {
    check("GET", "/v1/charges", "list_charges");
    check("POST", "/v1/charges", "create_charge");
    check("DELETE", "/v1/charges", "-");
    check("get", "/v1/charges", "-"); // methods are compared case-sensitively
    check("GET", "/", "root");
    check("GET", "", "-");
    check("GET", "v1/charges", "-");
}

#[test]
fn placeholders_match_one_segment() {
    check("GET", "/v1/charges/ch_123", "get_charge");
    check("GET", "/v1/customers/cus%20x", "get_customer"); // percent-encoded chars stay in the segment
    check("GET", "/v1/customers/a%2Fb", "get_customer"); // an encoded slash is not a separator
    check("GET", "/v1/customers/a/b", "-"); // segment count mismatch
    check("GET", "/v1/customers", "-");
    check("GET", "/v1/customers//", "-");
}

#[test]
fn trailing_slash_is_significant() {
    check("GET", "/v1/charges/", "-");
    check("GET", "/v1/charges/ch_1/", "-");
}

#[test]
fn twilio_style_segments_and_suffixes() {
    check(
        "POST",
        "/2010-04-01/Accounts/AC123/Messages.json",
        "send_message",
    );
    check(
        "GET",
        "/2010-04-01/Accounts/AC123/Messages/SM456.json",
        "get_message",
    );
    check("GET", "/2010-04-01/Accounts/AC123/Messages/SM456.xml", "-");
    check("GET", "/2010-04-01/Accounts/AC123/Messages/.json", "-"); // placeholders need 1+ chars
    check(
        "GET",
        "/2010-04-01/Accounts/AC123/Messages/SM456/Media/ME789",
        "get_media",
    );
    check("GET", "/api/v2-beta/items", "versioned");
    check("GET", "/api/v-beta/items", "-");
    check("GET", "/api/2-beta/items", "-");
}

#[test]
fn most_literal_characters_win() {
    check("GET", "/v1/charges/search", "search_charges");
    check("GET", "/v1/charges/searcher", "get_charge");
}

/// A path a vendor's router could take for a more literal operation, regardless of case (Express,
/// ASP.NET) or with a format suffix or `;` parameters stripped (Rails, Spring MVC before 5.3), is
/// no operation: a grant of `get_charge` must not reach `search_charges`' handler.
#[test]
fn a_loose_match_of_a_more_literal_operation_is_none() {
    for path in [
        "/v1/charges/Search",
        "/v1/charges/SEARCH",
        "/v1/charges/search.json",
        "/v1/charges/Search.xml",
        "/v1/charges/search;v=1",
    ] {
        check("GET", path, "-");
    }
    // Alike only in part: the placeholder's.
    check("GET", "/v1/charges/searches", "get_charge");
    check("GET", "/v1/charges/search-2", "get_charge");
    check("GET", "/v1/charges/ch_search", "get_charge");
    // A `HEAD` that a `HEAD` operation matches loosely does not fall back to `GET`.
    let table = OperationTable::new([
        ("search_head", "HEAD", "/v1/charges/search"),
        ("get_charge", "GET", "/v1/charges/{id}"),
    ])
    .unwrap();
    assert!(table.find("HEAD", "/v1/charges/Search").is_none());
    let found = table.find("HEAD", "/v1/charges/ch_1").unwrap();
    assert_eq!(&**found.id, "get_charge");
    // Suffixes of the Twilio style: `media.json` under `{Sid}.json` beside a literal
    // `Messages.json` one level up is another segment count, so no sibling.
    check(
        "GET",
        "/2010-04-01/Accounts/AC1/Messages/MESSAGES.json",
        "get_message",
    );
}

#[test]
fn head_falls_back_to_get() {
    check("HEAD", "/v1/charges/ch_1", "get_charge");
    check("HEAD", "/files/f1", "head_file"); // a declared HEAD operation wins
    check("HEAD", "/nothing", "-");
    check("GET", "/files/f1", "get_file");
}

/// A `HEAD` operation does not take a path a more literal `GET` operation names: a server that
/// answers `HEAD` with a `GET` route may run that route's handler.
#[test]
fn a_head_operation_yields_to_a_more_literal_get_one() {
    let table = OperationTable::new([
        ("head_file", "HEAD", "/files/{id}"),
        ("export", "GET", "/files/export"),
        ("get_file", "GET", "/files/{id}"),
    ])
    .unwrap();
    let found = |method: &str, path: &str| table.find(method, path).map(|m| m.id.to_string());
    assert_eq!(found("HEAD", "/files/export"), None);
    assert_eq!(found("HEAD", "/files/Export"), None);
    assert_eq!(found("HEAD", "/files/f1").as_deref(), Some("head_file"));
    assert_eq!(found("GET", "/files/export").as_deref(), Some("export"));
    // Fewer fixed characters is not what decides: a HEAD template less specific at one
    // segment than the GET one the path matches yields too.
    let table = OperationTable::new([
        ("head_export", "HEAD", "/{kind}/export"),
        ("get_file", "GET", "/files/{id}"),
    ])
    .unwrap();
    assert!(table.find("HEAD", "/files/export").is_none());
    assert_eq!(
        table
            .find("HEAD", "/docs/export")
            .map(|m| m.id.to_string())
            .as_deref(),
        Some("head_export")
    );
}

#[test]
fn specificity_does_not_depend_on_declaration_order() {
    let table = OperationTable::new([
        ("get_charge", "GET", "/v1/charges/{id}"),
        ("search_charges", "GET", "/v1/charges/search"),
    ])
    .unwrap();
    let matched = table.find("GET", "/v1/charges/search").unwrap();
    assert_eq!(
        (&**matched.id, &**matched.template),
        ("search_charges", "/v1/charges/search")
    );
}

#[track_caller]
fn check_template(template: &str, literal_len: Option<usize>) {
    match PathTemplate::parse(template) {
        Ok(parsed) => {
            assert_eq!(Some(parsed.literal_len()), literal_len, "{template}");
            assert_eq!(parsed.as_str(), template);
        }
        Err(error) => {
            assert_eq!(None, literal_len, "{template}: {error}");
            assert!(error.to_string().contains(template), "{error}");
        }
    }
}

#[test]
fn template_syntax() {
    check_template("/v1/charges", Some(11));
    check_template("/v1/charges/{id}", Some(12));
    check_template("/v1/charges/search", Some(18));
    check_template("/{a}/{b}.json", Some(7));
    check_template("/", Some(1));
    check_template("/x/", Some(3));
    check_template("v1/charges", None); // no leading slash
    check_template("/v1//charges", None); // empty segment
    check_template("/v1/{id", None); // unbalanced
    check_template("/v1/id}", None);
    check_template("/v1/{}", None); // empty name
    check_template("/v1/{a}{b}", None); // two placeholders in a segment
    check_template("/v1/{a-b}", None);
    check_template("/v1/charges?limit=1", None);
}

#[test]
fn table_rejects_bad_declarations() {
    let error = OperationTable::new([("x", "get", "/x")]).unwrap_err();
    assert!(
        matches!(error, PolicyError::InvalidMethod { .. }),
        "{error}"
    );
    let error =
        OperationTable::new([("a", "GET", "/x/{id}"), ("b", "GET", "/x/{id}")]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "operations `a` and `b` both declare `GET /x/{id}`; remove one or make the templates differ"
    );
}

/// Two templates a path matches, neither the more specific segment by segment
/// (`/v1/{acct}/invoices/{id}` has more literal text, `/v1/admin/{section}/{item}` its literal
/// first): Postern's order takes the first, a literal-first router (httprouter, gin, chi,
/// find-my-way, ASP.NET Core) the second — so the path matches neither, whichever is granted.
/// Paths only one of them matches, and pairs where one is the more specific everywhere, are
/// matched as before.
#[test]
fn a_path_two_templates_dispute_matches_neither() {
    let table = OperationTable::new([
        ("get_invoice", "GET", "/v1/{acct}/invoices/{id}"),
        ("admin_item", "GET", "/v1/admin/{section}/{item}"),
        ("get_charge", "GET", "/v1/charges/{id}"),
        ("search_charges", "GET", "/v1/charges/search"),
    ])
    .unwrap();
    let found = |path: &str| table.find("GET", path).map(|m| m.id.to_string());
    assert_eq!(found("/v1/admin/invoices/x"), None);
    // Spelled as a case-blind or decoding router still reads it.
    assert_eq!(found("/v1/ADMIN/invoices/x"), None);
    assert_eq!(found("/v1/%61dmin/invoices/x"), None);
    assert_eq!(
        found("/v1/acct_1/invoices/in_1").as_deref(),
        Some("get_invoice")
    );
    assert_eq!(found("/v1/admin/users/u_1").as_deref(), Some("admin_item"));
    // One more specific at every segment: no dispute.
    assert_eq!(
        found("/v1/charges/search").as_deref(),
        Some("search_charges")
    );
    assert_eq!(found("/v1/charges/ch_1").as_deref(), Some("get_charge"));
    // A `HEAD` falling back to the `GET` operations is refused the same way.
    assert_eq!(table.find("HEAD", "/v1/admin/invoices/x"), None);

    // A rival whose placeholder has fixed text beside it is read decoded too: `%762` is `v2`
    // to a decoding router, which takes the path for `/v1/{acct}/items/v{version}`.
    let table = OperationTable::new([
        ("get_item_version", "GET", "/v1/{acct}/items/v{version}"),
        ("admin_item", "GET", "/v1/admin/{section}/{item}"),
    ])
    .unwrap();
    let found = |path: &str| table.find("GET", path).map(|m| m.id.to_string());
    assert_eq!(found("/v1/admin/items/v2"), None);
    assert_eq!(found("/v1/admin/items/%762"), None);
    assert_eq!(found("/v1/admin/items/V2"), None);
    assert_eq!(found("/v1/admin/items/x2").as_deref(), Some("admin_item"));
    assert_eq!(
        found("/v1/admin/items/%25762").as_deref(),
        Some("admin_item")
    );
}

/// A literal segment written with percent-escapes (`%40me` for `@me`, `%3A` for `:`) is what
/// routers that decode before routing take for the literal: it matches no operation, rather
/// than the placeholder beside it.
#[test]
fn an_escaped_literal_matches_no_operation() {
    let table = OperationTable::new([
        ("get_user", "GET", "/users/{user_id}"),
        ("get_me", "GET", "/users/@me"),
        ("get_doc", "GET", "/v1/documents/{doc}"),
        ("batch", "GET", "/v1/documents/doc:batchGet"),
    ])
    .unwrap();
    let found = |path: &str| table.find("GET", path).map(|m| m.id.to_string());
    assert_eq!(found("/users/%40me"), None);
    assert_eq!(found("/users/%40ME"), None);
    assert_eq!(found("/users/@me").as_deref(), Some("get_me"));
    assert_eq!(found("/v1/documents/doc%3AbatchGet"), None);
    assert_eq!(found("/v1/documents/doc%3abatchget"), None);
    // Escapes that do not spell the literal leave the placeholder's match alone.
    assert_eq!(found("/users/%40you").as_deref(), Some("get_user"));
    assert_eq!(found("/users/100%25").as_deref(), Some("get_user"));
}

/// A literal the config writes with escapes is the route a decoding server sees: the request
/// that spells it unescaped is not taken for the placeholder beside it.
#[test]
fn a_literal_written_with_escapes_is_read_decoded_too() {
    let table = OperationTable::new([
        ("get_user", "GET", "/users/{user_id}"),
        ("get_me", "GET", "/users/%40me"),
        ("cancel_any", "POST", "/v1/jobs/{job}"),
        ("cancel", "POST", "/v1/jobs/{job}%3Acancel"),
    ])
    .unwrap();
    let found = |method: &str, path: &str| table.find(method, path).map(|m| m.id.to_string());
    assert_eq!(found("GET", "/users/%40me").as_deref(), Some("get_me"));
    assert_eq!(found("GET", "/users/@me"), None);
    assert_eq!(found("GET", "/users/@ME"), None);
    assert_eq!(found("GET", "/users/ada").as_deref(), Some("get_user"));
    assert_eq!(
        found("POST", "/v1/jobs/7%3Acancel").as_deref(),
        Some("cancel")
    );
    assert_eq!(found("POST", "/v1/jobs/7:cancel"), None);
    assert_eq!(found("POST", "/v1/jobs/7").as_deref(), Some("cancel_any"));
}
