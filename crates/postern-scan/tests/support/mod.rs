pub mod corpus;

use postern_scan::ContentTypeHint;

pub fn hint(syntax: corpus::Syntax) -> ContentTypeHint {
    match syntax {
        corpus::Syntax::Json => ContentTypeHint::Json,
        corpus::Syntax::Form => ContentTypeHint::FormUrlEncoded,
        corpus::Syntax::Text => ContentTypeHint::Text,
    }
}
