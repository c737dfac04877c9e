//! TLS material: PEM loading, the listener's server config (optionally verifying client
//! certificates against `client_ca` and `client_crl`, read again at each reload), and the
//! caller identity in a client certificate's SPIFFE URI SAN, which lasts while the
//! certificate is valid and trusted.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;

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

/// The listener's TLS as read from the files `[gateway]` names, at start and again at each
/// reload: what new connections handshake with, and what their client certificates are
/// verified against. A connection keeps the config it was accepted with; the trust is asked
/// again on each of its requests ([`ClientCertificate::identity`]).
pub struct ListenerTls {
    pub server: Arc<rustls::ServerConfig>,
    /// `None` without `client_ca`: no client certificate identifies anyone.
    pub clients: Option<ClientTrust>,
    /// What is worth a warning about `client_crl` (a list past its `nextUpdate`).
    pub crl_notes: Vec<String>,
    /// When the served certificate (`tls_cert`'s first) expires, in seconds since the Unix
    /// epoch (`postern_listener_certificate_expiry_seconds`); `None` if it could not be read.
    pub not_after: Option<i64>,
}

/// What client certificates are verified against: `client_ca`, with `client_crl`.
pub struct ClientTrust {
    verifier: Arc<dyn ClientCertVerifier>,
    /// SHA-256 of the CA and revocation files' contents: a reload that reads the same files
    /// holds the same trust, and certificates verified under it need no second look.
    digest: [u8; 32],
}

/// The listener's TLS from `[gateway]` (`None` without `tls_cert` and `tls_key`): ALPN h2 and
/// http/1.1; with `client_ca`, client certificates are verified when presented (callers may
/// still authenticate with a token instead), against `client_crl` too when it is set. A file
/// that cannot be used is a [`postern_config::KeyProblem`] at its own key, so `check`, `serve`
/// and a reload place it at its line and column alike.
pub fn listener_config(
    gateway: &postern_config::GatewayConfig,
) -> anyhow::Result<Option<ListenerTls>> {
    let (Some(cert), Some(key)) = (&gateway.tls_cert, &gateway.tls_key) else {
        return Ok(None);
    };
    let certs = read_certificates(cert).map_err(at_key(
        "tls_cert",
        "point `tls_cert` at a PEM certificate chain",
    ))?;
    let not_after = certs.first().and_then(|leaf| {
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        Some(parsed.validity().not_after.timestamp())
    });
    let key_fix = "point `tls_key` at the PEM private key of the `tls_cert` certificate";
    let key = read_private_key(key).map_err(at_key("tls_key", key_fix))?;
    let provider = crypto_provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let mut crl_notes = Vec::new();
    let clients = match &gateway.client_ca {
        Some(ca) => Some(client_trust(
            ca,
            gateway.client_crl.as_deref(),
            provider,
            &mut crl_notes,
        )?),
        None => None,
    };
    let builder = match &clients {
        Some(trust) => builder.with_client_cert_verifier(trust.verifier.clone()),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("the listener certificate and key do not match")
        .map_err(at_key("tls_key", key_fix))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if clients.is_some() {
        // No session resumption where client certificates identify callers: a resumed session
        // carries the certificates of the handshake it resumes, not verified again, and each
        // resumption hands out fresh tickets, so a caller could go on resuming past its
        // certificate's expiry (short-lived SVIDs are SPIFFE's revocation) or a `client_ca`
        // change. Every connection makes a full handshake instead.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Some(ListenerTls {
        server: Arc::new(config),
        clients,
        crl_notes,
        not_after,
    }))
}

/// A problem with a `[gateway]` file, placed at its key with its fix.
fn at_key(key: &'static str, fix: &'static str) -> impl Fn(anyhow::Error) -> anyhow::Error {
    move |error: anyhow::Error| {
        anyhow::Error::new(postern_config::KeyProblem::gateway(
            key,
            format!("{error:#}"),
            fix,
        ))
    }
}

/// The verifier of `client_ca`'s certificates, checking `client_crl`'s lists when set: every
/// certificate of a presented chain must then be covered by its issuer's list (fail closed: a
/// certificate whose issuer has no list in the file is refused). A list past its `nextUpdate`
/// still revokes what it names, and is said in `notes`.
fn client_trust(
    ca: &Path,
    crl: Option<&Path>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    notes: &mut Vec<String>,
) -> anyhow::Result<ClientTrust> {
    use sha2::Digest as _;
    let ca_problem = at_key("client_ca", "point `client_ca` at PEM CA certificates");
    let ca_pem = read_file(ca).map_err(&ca_problem)?;
    let cas = certificates_in(ca, &ca_pem).map_err(&ca_problem)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in &cas {
        roots
            .add(cert.clone())
            .with_context(|| format!("client_ca {}", ca.display()))
            .map_err(&ca_problem)?;
    }
    let mut digest = sha2::Sha256::new();
    digest.update((ca_pem.len() as u64).to_be_bytes());
    digest.update(&ca_pem);
    let mut builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .allow_unauthenticated();
    if let Some(crl) = crl {
        let crl_problem = at_key(
            "client_crl",
            "point `client_crl` at the PEM (or DER) revocation lists of the `client_ca` CAs",
        );
        let text = read_file(crl).map_err(&crl_problem)?;
        let lists = revocation_lists(crl, &text, &cas, notes).map_err(&crl_problem)?;
        digest.update(&text);
        builder = builder.with_crls(lists);
    }
    let verifier = builder
        .build()
        .context("building the client certificate verifier")
        .map_err(at_key(
            "client_crl",
            "point `client_crl` at the revocation lists of the `client_ca` CAs",
        ))?;
    Ok(ClientTrust {
        verifier,
        digest: digest.finalize().into(),
    })
}

/// How to mend a `client_crl` that does not cover the `client_ca` CAs.
const CRL_FIX: &str = "put each `client_ca` CA's current revocation list in `client_crl` (X.509 v2 lists, signed by that CA's key: `openssl ca -gencrl` makes one with a `crl_extensions` section)";

/// Says in `notes` what is likely to refuse client certificates at the handshake: with
/// `client_crl`, each certificate of a chain needs its issuer's list, so a CA in `client_ca`
/// needs one in `lists`, issued under its name and signed by its key (the first under its name,
/// as webpki picks), and a CA certificate that limits its key's use must allow signing lists
/// (`cRLSign`). Warnings, not errors: a CA of the bundle that only vouches for another CA of
/// the bundle (a root beside its intermediate) is never asked for its list, webpki's paths
/// ending at the first trust anchor they reach.
fn lists_cover_every_ca(
    path: &Path,
    lists: &[x509_parser::revocation_list::CertificateRevocationList<'_>],
    cas: &[CertificateDer<'static>],
    notes: &mut Vec<String>,
) {
    let mut note = |problem: String| {
        notes.push(format!(
            "{problem}: certificates it issued will be refused at the handshake; {CRL_FIX}"
        ))
    };
    for ca in cas {
        let Ok((_, ca)) = x509_parser::parse_x509_certificate(ca.as_ref()) else {
            continue;
        };
        let signs_lists = match ca.key_usage() {
            Ok(Some(usage)) => usage.value.crl_sign(),
            _ => true,
        };
        let first = lists
            .iter()
            .find(|list| list.issuer().as_raw() == ca.subject().as_raw());
        match first {
            _ if !signs_lists => note(format!(
                "the client_ca CA {} may not sign revocation lists (its key usage lacks cRLSign)",
                ca.subject()
            )),
            None => note(format!(
                "{} holds no revocation list of the client_ca CA {}",
                path.display(),
                ca.subject()
            )),
            Some(list) if list.verify_signature(ca.public_key()).is_err() => note(format!(
                "the first revocation list of {} in {} is not signed by the client_ca CA of that name (another CA of the same name, or a forged list)",
                ca.subject(),
                path.display()
            )),
            Some(_) => {}
        }
    }
}

/// The certificate revocation lists in `text` (read from `path`, named in the errors): PEM
/// `X509 CRL` blocks, or one DER list; at least one. Each must parse; one past its
/// `nextUpdate`, and a CA of `cas` they do not cover ([`lists_cover_every_ca`]), are said in
/// `notes`. Each list is parsed once here (rustls parses them again to use them).
fn revocation_lists(
    path: &Path,
    text: &[u8],
    cas: &[CertificateDer<'static>],
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<CertificateRevocationListDer<'static>>> {
    let mut lists: Vec<CertificateRevocationListDer<'static>> =
        rustls_pemfile::crls(&mut &text[..])
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing the PEM revocation lists in {}", path.display()))?;
    if lists.is_empty() && text.first() == Some(&0x30) {
        lists.push(CertificateRevocationListDer::from(text.to_vec()));
    }
    if lists.is_empty() {
        anyhow::bail!(
            "{} holds no certificate revocation list (expected -----BEGIN X509 CRL----- or DER)",
            path.display()
        );
    }
    let now = x509_parser::time::ASN1Time::now();
    let mut parsed_lists = Vec::with_capacity(lists.len());
    for (index, list) in lists.iter().enumerate() {
        let (_, parsed) = x509_parser::parse_x509_crl(list.as_ref())
            .map_err(|error| anyhow::anyhow!("not an X.509 certificate revocation list ({error})"))
            .with_context(|| format!("revocation list {} in {}", index + 1, path.display()))?;
        if let Some(next) = parsed.next_update().filter(|next| *next < now) {
            let next = next
                .to_datetime()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| next.to_string());
            notes.push(format!(
                "the revocation list of {} in {} was due to be replaced at {next} (its nextUpdate): it still revokes what it names; publish a current one",
                parsed.issuer(),
                path.display()
            ));
        }
        parsed_lists.push(parsed);
    }
    lists_cover_every_ca(path, &parsed_lists, cas, notes);
    drop(parsed_lists);
    Ok(lists)
}

/// A verified client certificate naming a SPIFFE ID, kept for the connection that presented
/// it: its identity lasts while the certificate is valid and the listener's trust (a reload
/// may change `client_ca` or `client_crl`) still verifies it.
pub struct ClientCertificate {
    spiffe_id: String,
    /// The earliest `notAfter` of the presented chain.
    not_after: SystemTime,
    /// The presented chain, end entity first, to verify again under another trust.
    chain: Vec<CertificateDer<'static>>,
    /// The trust the handshake verified it under.
    verified_under: [u8; 32],
    /// The last other trust it was verified under again, and whether it passed.
    checked: std::sync::Mutex<Option<([u8; 32], bool)>>,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl ClientCertificate {
    /// The certificate a handshake under `trust` verified, if it names one SPIFFE ID.
    pub fn presented(
        connection: &rustls::ServerConnection,
        trust: Option<&ClientTrust>,
    ) -> Option<ClientCertificate> {
        let trust = trust?;
        let chain = connection.peer_certificates()?;
        let (leaf, intermediates) = chain.split_first()?;
        // Each certificate parsed once: the leaf for its SPIFFE ID and expiry, the
        // intermediates for theirs.
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        let spiffe_id = spiffe_id(&parsed)?;
        let not_after = intermediates
            .iter()
            .map(|cert| {
                x509_parser::parse_x509_certificate(cert.as_ref())
                    .ok()
                    .map(|(_, parsed)| parsed.validity().not_after.timestamp())
            })
            .try_fold(parsed.validity().not_after.timestamp(), |earliest, end| {
                Some(earliest.min(end?))
            });
        let Some(not_after) = not_after else {
            // Verified by webpki, yet not read here: it identifies no one (a token still may).
            tracing::debug!(%spiffe_id, "a client certificate chain could not be read for its expiry; it identifies no caller");
            return None;
        };
        Some(ClientCertificate {
            spiffe_id,
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(not_after).ok()?),
            chain: chain.iter().map(|cert| cert.clone().into_owned()).collect(),
            verified_under: trust.digest,
            checked: std::sync::Mutex::new(None),
        })
    }

    /// When the certificate (or the intermediate presented with it that ends first) expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Its SPIFFE ID as of `at` under `trust` (the listener's as it stands): none once the
    /// certificate has expired, without a trust, or when `trust` is not the one the handshake
    /// verified it under and does not verify it (another `client_ca`, a `client_crl` that now
    /// lists it). The verification under a new trust is made once and kept.
    pub fn identity(&self, trust: Option<&ClientTrust>, at: SystemTime) -> Option<&str> {
        let trust = trust?;
        if at > self.not_after {
            return None;
        }
        if trust.digest == self.verified_under {
            return Some(&self.spiffe_id);
        }
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        let passed = match *checked {
            Some((digest, passed)) if digest == trust.digest => passed,
            _ => {
                let since = at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                let (end_entity, intermediates) = self.chain.split_first()?;
                let passed = trust
                    .verifier
                    .verify_client_cert(
                        end_entity,
                        intermediates,
                        rustls::pki_types::UnixTime::since_unix_epoch(since),
                    )
                    .is_ok();
                *checked = Some((trust.digest, passed));
                passed
            }
        };
        passed.then_some(self.spiffe_id.as_str())
    }
}

/// The `spiffe://` URI SAN of a verified client certificate, if it has exactly one: an X.509
/// SVID carries one SPIFFE ID (SPIFFE X509-SVID §2), so a certificate naming two identifies no
/// caller (a token may still).
fn spiffe_id(parsed: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
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

    /// [`super::spiffe_id`] of a certificate in DER.
    fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
        super::spiffe_id(&parsed)
    }

    fn uri(text: &str) -> rcgen::SanType {
        rcgen::SanType::URI(text.try_into().unwrap())
    }

    /// A CA named `name` (DER) with its parameters and key; `crl_sign`: whether its key usage
    /// allows signing revocation lists.
    fn ca(
        name: &str,
        crl_sign: bool,
    ) -> (
        CertificateDer<'static>,
        rcgen::CertificateParams,
        rcgen::KeyPair,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        if crl_sign {
            params.key_usages.push(rcgen::KeyUsagePurpose::CrlSign);
        }
        let der = params.self_signed(&key).unwrap().der().clone();
        (der, params, key)
    }

    /// An empty revocation list issued under `params`' name, signed by `key`.
    fn list(
        params: &rcgen::CertificateParams,
        key: &rcgen::KeyPair,
    ) -> rustls::pki_types::CertificateRevocationListDer<'static> {
        let mut params = params.clone();
        // (rcgen refuses to sign a list for a CA whose key may not.)
        params.key_usages.clear();
        rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(2035, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&rcgen::Issuer::from_params(&params, key))
        .unwrap()
        .der()
        .clone()
    }

    /// What is likely to refuse certificates at the handshake is said at load: a CA of
    /// `client_ca` with no list of its own in `client_crl`, a first list under its name not
    /// signed by its key, a CA whose key may not sign lists.
    #[test]
    fn a_client_ca_without_a_list_signed_by_its_key_is_warned_of() {
        let path = std::path::Path::new("revoked.crl");
        let check = |lists: &[rustls::pki_types::CertificateRevocationListDer<'static>],
                     cas: &[_]| {
            let parsed: Vec<_> = lists
                .iter()
                .map(|list| x509_parser::parse_x509_crl(list.as_ref()).unwrap().1)
                .collect();
            let mut notes = Vec::new();
            super::lists_cover_every_ca(path, &parsed, cas, &mut notes);
            notes
        };
        let (one, one_params, one_key) = ca("CA one", true);
        let (two, two_params, two_key) = ca("CA two", true);
        let (_, _, impostor_key) = ca("CA one", true);
        let lists = [list(&one_params, &one_key), list(&two_params, &two_key)];
        assert_eq!(
            check(&lists, &[one.clone(), two.clone()]),
            Vec::<String>::new()
        );
        let missing = check(&lists[..1], &[one.clone(), two]).join("\n");
        assert!(
            missing.contains("holds no revocation list of the client_ca CA CN=CA two")
                && missing.contains("will be refused at the handshake"),
            "{missing}"
        );
        // webpki takes the first list under the CA's name: a good one after it does not help.
        let forged = [
            list(&one_params, &impostor_key),
            list(&one_params, &one_key),
        ];
        let forged = check(&forged, &[one]).join("\n");
        assert!(
            forged.contains("is not signed by the client_ca CA"),
            "{forged}"
        );
        let (limited, limited_params, limited_key) = ca("CA limited", false);
        let unusable = check(&[list(&limited_params, &limited_key)], &[limited]).join("\n");
        assert!(unusable.contains("lacks cRLSign"), "{unusable}");
    }

    #[test]
    fn a_caller_certificate_names_one_spiffe_id_or_none() {
        let one = certificate(vec![
            rcgen::SanType::DnsName("billing.internal".try_into().unwrap()),
            uri("spiffe://example.org/billing"),
            uri("https://example.org/not-spiffe"),
        ]);
        assert_eq!(
            spiffe_id(&one).as_deref(),
            Some("spiffe://example.org/billing")
        );
        let two = certificate(vec![
            uri("spiffe://example.org/billing"),
            uri("spiffe://example.org/admin"),
        ]);
        assert_eq!(spiffe_id(&two), None);
        assert_eq!(spiffe_id(&certificate(vec![])), None);
    }
}
