//! TLS material: PEM loading, the listener's server config (optionally verifying client
//! certificates against `client_ca`), and the caller identity in a client certificate's
//! SPIFFE URI SAN.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The one crypto provider Postern uses (ring).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in PEM text.
pub fn read_certificates_pem(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .context("parsing PEM certificates")
}

pub fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    certificates_in(path, &read_file(path)?)
}

/// A file's contents, the error naming it.
pub fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// The PEM certificates in `pem`, read from `path` (named in the errors); at least one.
pub fn certificates_in(path: &Path, pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = read_certificates_pem(pem)
        .with_context(|| format!("the certificates in {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "{} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(certs)
}

pub fn read_private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = read_file(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("parsing the PEM private key in {}", path.display()))?
        .with_context(|| {
            format!(
                "{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                path.display()
            )
        })
}

/// The listener's TLS config from `[gateway]` (`None` without `tls_cert` and `tls_key`): ALPN
/// h2 and http/1.1; with `client_ca`, client certificates are verified when presented (callers
/// may still authenticate with a token instead). A file that cannot be used is a
/// [`postern_config::KeyProblem`] at its own key, so `check`, `serve` and a reload place it at
/// its line and column alike.
pub fn listener_config(
    gateway: &postern_config::GatewayConfig,
) -> anyhow::Result<Option<rustls::ServerConfig>> {
    let (Some(cert), Some(key)) = (&gateway.tls_cert, &gateway.tls_key) else {
        return Ok(None);
    };
    let at = |key: &'static str, fix: &'static str| {
        move |error: anyhow::Error| {
            anyhow::Error::new(postern_config::KeyProblem::gateway(
                key,
                format!("{error:#}"),
                fix,
            ))
        }
    };
    let certs = read_certificates(cert).map_err(at(
        "tls_cert",
        "point `tls_cert` at a PEM certificate chain",
    ))?;
    let key_fix = "point `tls_key` at the PEM private key of the `tls_cert` certificate";
    let key = read_private_key(key).map_err(at("tls_key", key_fix))?;
    let provider = crypto_provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &gateway.client_ca {
        Some(ca) => {
            let ca_problem = at("client_ca", "point `client_ca` at PEM CA certificates");
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certificates(ca).map_err(&ca_problem)? {
                roots
                    .add(cert)
                    .with_context(|| format!("client_ca {}", ca.display()))
                    .map_err(&ca_problem)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .context("building the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("the listener certificate and key do not match")
        .map_err(at("tls_key", key_fix))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if gateway.client_ca.is_some() {
        // No session resumption where client certificates identify callers: a resumed session
        // carries the certificates of the handshake it resumes, not verified again, and each
        // resumption hands out fresh tickets, so a caller could go on resuming past its
        // certificate's expiry (short-lived SVIDs are SPIFFE's revocation) or a `client_ca`
        // change. Every connection makes a full handshake instead.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Some(config))
}

/// The `spiffe://` URI SAN of a verified client certificate, if it has exactly one: an X.509
/// SVID carries one SPIFFE ID (SPIFFE X509-SVID §2), so a certificate naming two identifies no
/// caller (a token may still).
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
                Some(uri.to_string())
            }
            _ => None,
        });
    match (ids.next(), ids.next()) {
        (Some(id), None) => Some(id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::CertificateDer;

    fn certificate(sans: Vec<rcgen::SanType>) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().clone()
    }

    fn uri(text: &str) -> rcgen::SanType {
        rcgen::SanType::URI(text.try_into().unwrap())
    }

    #[test]
    fn a_caller_certificate_names_one_spiffe_id_or_none() {
        let one = certificate(vec![
            rcgen::SanType::DnsName("billing.internal".try_into().unwrap()),
            uri("spiffe://example.org/billing"),
            uri("https://example.org/not-spiffe"),
        ]);
        assert_eq!(
            super::spiffe_id(&one).as_deref(),
            Some("spiffe://example.org/billing")
        );
        let two = certificate(vec![
            uri("spiffe://example.org/billing"),
            uri("spiffe://example.org/admin"),
        ]);
        assert_eq!(super::spiffe_id(&two), None);
        assert_eq!(super::spiffe_id(&certificate(vec![])), None);
    }
}
