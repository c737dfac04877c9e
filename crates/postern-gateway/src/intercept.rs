//! TLS interception for the forward proxy: Postern's own CA, generated on first run in
//! `<data_dir>/ca/` (key mode 0600), and leaf certificates issued per host on demand.
//!
//! A client that trusts the CA (`postern ca export` prints it) sees a certificate for the host it
//! asked for; one that does not refuses the handshake and nothing is forwarded. Leaves share one
//! key pair generated at start (in memory only) and one TLS session cache, each has a random
//! serial number (RFC 5280 §4.1.2.2: clients such as NSS refuse two certificates of one issuer
//! with one serial), they are valid for 30 days and re-issued after 7 days; at most
//! [`MAX_CACHED_LEAVES`] are cached (the older half is dropped when full).
//!
//! With `[proxy] intercept_ca_names` set, a new CA carries them as critical name constraints
//! (RFC 5280 §4.2.1.10: those DNS names and every name below them permitted, every IPv4 and IPv6
//! address excluded), so a stolen CA key can vouch for no other site to a client that trusts the
//! CA; an existing CA must carry exactly the configured names. Postern issues no leaf outside the
//! CA's names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Directory under `data_dir` holding the CA.
pub const CA_DIR: &str = "ca";
/// The CA certificate (PEM), safe to distribute.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key (PEM, mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Leaves kept in memory; past this the older half is dropped.
pub const MAX_CACHED_LEAVES: usize = 10_000;
const LEAF_REISSUE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// TLS sessions kept for resumption, over all leaves together.
const CACHED_SESSIONS: usize = 4096;

/// Postern's interception CA and its leaf cache.
pub struct InterceptCa {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    /// The DNS names the CA's name constraints permit, sorted; empty for a CA without them.
    names: Vec<String>,
    leaf_key: KeyPair,
    leaves: Mutex<HashMap<String, (Instant, Arc<rustls::ServerConfig>)>>,
    /// One session cache for every leaf's config: a config of its own each would keep its own
    /// 256 sessions, [`MAX_CACHED_LEAVES`] times over.
    sessions: Arc<rustls::server::ServerSessionMemoryCache>,
}

impl InterceptCa {
    /// Loads the CA from `<data_dir>/ca/`, creating it on first run, constrained to `names`
    /// (`[proxy] intercept_ca_names`) when there are any; an existing CA must carry exactly
    /// those.
    pub fn load_or_create(data_dir: &Path, names: &[String]) -> anyhow::Result<InterceptCa> {
        let (cert_pem, key_pem) = ensure_ca_files(data_dir, names)?;
        let key = KeyPair::from_pem(&key_pem).with_context(|| {
            format!(
                "reading the interception CA key {}; if it is damaged, move the ca/ directory away to have a new CA generated (clients must then trust the new one)",
                ca_dir(data_dir).join(CA_KEY_FILE).display()
            )
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).with_context(|| {
            format!(
                "reading the interception CA certificate {}",
                ca_dir(data_dir).join(CA_CERT_FILE).display()
            )
        })?;
        let ca_der = crate::tls::read_certificates_pem(cert_pem.as_bytes())?
            .into_iter()
            .next()
            .context("the interception CA file holds no certificate")?;
        // Leaves signed by a key that is not the certificate's would verify for no client.
        let certified_key = x509_parser::parse_x509_certificate(&ca_der)
            .map(|(_, certificate)| certificate.public_key().subject_public_key.data.to_vec())
            .context("parsing the interception CA certificate")?;
        if certified_key != issuer.key().public_key_raw() {
            anyhow::bail!(
                "the interception CA key {} is not the key of its certificate {}; restore the pair from backup, or move the ca/ directory away to have a new CA generated (clients must then trust the new one)",
                ca_dir(data_dir).join(CA_KEY_FILE).display(),
                ca_dir(data_dir).join(CA_CERT_FILE).display()
            );
        }
        let ca_names = permitted_names(&ca_der)?;
        check_names(data_dir, &ca_names, names)?;
        Ok(InterceptCa {
            issuer,
            ca_der,
            names: ca_names,
            leaf_key: KeyPair::generate().context("generating the leaf key")?,
            leaves: Mutex::new(HashMap::new()),
            sessions: rustls::server::ServerSessionMemoryCache::new(CACHED_SESSIONS),
        })
    }

    /// The DNS names the CA's name constraints permit (sorted); empty: no constraints.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether a client that trusts the CA would take its leaf for `host`: always for a CA
    /// without constraints; for a constrained one, a name inside its names (no address).
    pub fn vouches_for(&self, host: &str) -> bool {
        self.names.is_empty() || {
            let host = host.to_ascii_lowercase();
            host.parse::<std::net::IpAddr>().is_err()
                && self
                    .names
                    .iter()
                    .any(|name| postern_config::within_name(&host, name))
        }
    }

    /// A reloaded config's `[proxy] intercept_ca_names` against the running CA's.
    pub fn check_names(&self, data_dir: &Path, configured: &[String]) -> anyhow::Result<()> {
        check_names(data_dir, &self.names, configured)
    }

    /// A TLS server config presenting a leaf for `host` (ALPN h2 and http/1.1). The caller asks
    /// [`InterceptCa::vouches_for`] first: a constrained CA's leaf for another host would be
    /// refused by every client.
    pub fn server_config(&self, host: &str) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let host = host.to_ascii_lowercase();
        {
            let leaves = self.leaves.lock().expect("leaf cache lock");
            if let Some((issued, config)) = leaves.get(&host) {
                if issued.elapsed() < LEAF_REISSUE_AFTER {
                    return Ok(config.clone());
                }
            }
        }
        let config = Arc::new(self.issue(&host)?);
        let mut leaves = self.leaves.lock().expect("leaf cache lock");
        if leaves.len() >= MAX_CACHED_LEAVES {
            // Drop the older half, so hosts in steady use keep their leaf.
            let mut issued: Vec<Instant> = leaves.values().map(|(at, _)| *at).collect();
            issued.sort_unstable();
            let cutoff = issued[issued.len() / 2];
            leaves.retain(|_, (at, _)| *at > cutoff);
        }
        leaves.insert(host, (Instant::now(), config.clone()));
        Ok(config)
    }

    fn issue(&self, host: &str) -> anyhow::Result<rustls::ServerConfig> {
        let chain = vec![self.leaf(host)?, self.ca_der.clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| anyhow::anyhow!("TLS setup: {error}"))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|error| anyhow::anyhow!("interception certificate: {error}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.session_storage = self.sessions.clone();
        Ok(config)
    }

    /// A new leaf certificate for `host`, signed by the CA.
    fn leaf(&self, host: &str) -> anyhow::Result<CertificateDer<'static>> {
        let mut params = CertificateParams::new(vec![host.to_string()])
            .with_context(|| format!("{host} is not a name a certificate can carry"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, host.to_string());
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(30);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        // Positive, as DER INTEGER serials must be: the top bit clear.
        // Its top byte kept from 0 too, so every serial is 16 bytes long.
        let mut serial: [u8; 16] = rand::random();
        serial[0] = serial[0] & 0x7f | 0x40;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let leaf = params
            .signed_by(&self.leaf_key, &self.issuer)
            .context("signing a leaf certificate")?;
        Ok(leaf.der().clone())
    }
}

fn ca_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(CA_DIR)
}

/// The CA certificate PEM (for trust stores), creating the CA if it does not exist yet
/// (constrained to `names` if there are any; an existing CA must carry exactly those).
pub fn export_ca_pem(data_dir: &Path, names: &[String]) -> anyhow::Result<String> {
    let (cert_pem, _) = ensure_ca_files(data_dir, names)?;
    let der = crate::tls::read_certificates_pem(cert_pem.as_bytes())?
        .into_iter()
        .next()
        .context("the interception CA file holds no certificate")?;
    check_names(data_dir, &permitted_names(&der)?, names)?;
    Ok(cert_pem)
}

/// What `postern check` says of the CA already in `data_dir` (it makes none): why interception
/// would be off at start with `names` (`[proxy] intercept_ca_names`), if it would be.
pub fn existing_ca_problem(data_dir: &Path, names: &[String]) -> Option<String> {
    let pem = std::fs::read(ca_dir(data_dir).join(CA_CERT_FILE)).ok()?;
    let checked = crate::tls::read_certificates_pem(&pem)
        .and_then(|certificates| {
            certificates
                .into_iter()
                .next()
                .context("the interception CA file holds no certificate")
        })
        .and_then(|der| check_names(data_dir, &permitted_names(&der)?, names));
    checked.err().map(|error| {
        format!("{error:#}; until then `serve` starts with interception off (503 interception_unavailable)")
    })
}

/// The DNS names a CA certificate's name constraints permit, sorted (empty without them).
fn permitted_names(der: &[u8]) -> anyhow::Result<Vec<String>> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .context("parsing the interception CA certificate")?;
    let constraints = certificate
        .name_constraints()
        .context("reading the interception CA's name constraints")?;
    let Some(constraints) = constraints else {
        return Ok(Vec::new());
    };
    use x509_parser::extensions::GeneralName;
    // Only the shape Postern makes is understood: permitted DNS names (no leading dot), every
    // address excluded. Any other (a CA put in ca/ by hand) could make Postern issue leaves
    // that clients refuse, or refuse ones they would take.
    let foreign = || {
        anyhow::anyhow!(
            "the interception CA certificate carries name constraints of a shape Postern does not make (only permitted DNS names, with every IP address excluded); move the ca/ directory away to have a new CA generated (clients must then trust the new one)"
        )
    };
    let mut names = Vec::new();
    for subtree in constraints.value.permitted_subtrees.iter().flatten() {
        match subtree.base {
            GeneralName::DNSName(name) if !name.is_empty() && !name.starts_with('.') => {
                names.push(name.to_ascii_lowercase())
            }
            _ => return Err(foreign()),
        }
    }
    for subtree in constraints.value.excluded_subtrees.iter().flatten() {
        if !matches!(subtree.base, GeneralName::IPAddress(_)) {
            return Err(foreign());
        }
    }
    if names.is_empty() {
        return Err(foreign());
    }
    names.sort();
    Ok(names)
}

/// A CA's names against the configured ones: with none configured any CA is taken (a
/// constrained one still vouches only for its names); with some, the CA must carry exactly
/// those, or clients would refuse the leaves of some hosts, or trust a wider CA than asked.
fn check_names(data_dir: &Path, ca: &[String], configured: &[String]) -> anyhow::Result<()> {
    let mut configured = configured.to_vec();
    configured.sort();
    if configured.is_empty() || ca == configured.as_slice() {
        return Ok(());
    }
    let has = if ca.is_empty() {
        "no name constraints".to_string()
    } else {
        format!("the names {}", ca.join(", "))
    };
    anyhow::bail!(
        "the interception CA in {} has {has}, and [proxy] intercept_ca_names is {}; a CA's names cannot change: move the ca/ directory away to have a new CA made with the configured names (clients must then trust the new one: `postern ca export --config FILE`), or set intercept_ca_names to the CA's",
        ca_dir(data_dir).display(),
        configured.join(", ")
    )
}

/// Reads (certificate PEM, key PEM), generating both on first use (constrained to `names` if
/// there are any).
fn ensure_ca_files(data_dir: &Path, names: &[String]) -> anyhow::Result<(String, String)> {
    let dir = ca_dir(data_dir);
    if let Some(files) = read_ca_files(&dir)? {
        return Ok(files);
    }
    // A data_dir made here (`postern ca export` before any `serve`) is private, as `serve`
    // makes it.
    if let Some(data_dir) = dir.parent().filter(|parent| !parent.exists()) {
        crate::create_private_dir(data_dir)?;
    }
    let (cert_pem, key_pem) = new_ca(names)?;
    // Both files are written whole into a private directory of their own, which is then
    // renamed into place: a crash leaves no half CA (at most a stray temporary directory), and
    // of two first starts at once (`serve` and `postern ca export`) one CA wins and both use it.
    let parent = dir.parent().unwrap_or(Path::new("."));
    let tmp = postern_keyfile::temporary_sibling(&dir);
    let written = crate::create_private_dir(&tmp)
        .and_then(|()| crate::write_private_file(&tmp.join(CA_KEY_FILE), key_pem.as_bytes()))
        .and_then(|()| crate::write_private_file(&tmp.join(CA_CERT_FILE), cert_pem.as_bytes()));
    if let Err(error) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(error);
    }
    // Renaming over an empty `ca/` replaces it; over a complete one, another process won. An
    // older version wrote into `ca/` itself: what a crash of it left there (`*.tmp`, no CA) is
    // cleared first, so the rename can replace it.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    if let Err(error) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        return match read_ca_files(&dir)? {
            Some(files) => Ok(files),
            None => Err(error).with_context(|| format!("creating {}", dir.display())),
        };
    }
    let _ = std::fs::File::open(parent).and_then(|parent| parent.sync_all());
    tracing::info!(path = %dir.join(CA_CERT_FILE).display(), "generated the interception CA (trust it with `postern ca export`)");
    Ok((cert_pem, key_pem))
}

/// The CA in `dir` as (certificate PEM, key PEM); `None` if there is none yet.
fn read_ca_files(dir: &Path) -> anyhow::Result<Option<(String, String)>> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {}
        (true, false) | (false, true) => anyhow::bail!(
            "the interception CA in {} is incomplete ({} is missing); restore it from backup, or move the ca/ directory away to have a new CA generated (clients must then trust the new one)",
            dir.display(),
            if cert_path.exists() { CA_KEY_FILE } else { CA_CERT_FILE }
        ),
        (false, false) => return Ok(None),
    }
    let cert = std::fs::read_to_string(&cert_path)
        .with_context(|| format!("reading {}", cert_path.display()))?;
    // A key another user planted would let them stand in for any vendor to every client that
    // trusts the CA; one others can read, the same for whoever reads it.
    let key = match postern_keyfile::read_private_file(&key_path) {
        Ok(key) => key,
        Err(error) if postern_keyfile::is_not_private(&error) => anyhow::bail!(
            "{error}; the interception CA key must be readable by postern's user alone: `chown` it to that user and `chmod 600` it, or move the ca/ directory away to have a new CA generated (clients must then trust the new one)"
        ),
        Err(error) => {
            return Err(error).with_context(|| format!("reading {}", key_path.display()))
        }
    };
    let key = String::from_utf8(key.to_vec())
        .with_context(|| format!("{} is not a PEM file", key_path.display()))?;
    Ok(Some((cert, key)))
}

/// A new CA: (certificate PEM, key PEM), constrained to `names` if there are any.
fn new_ca(names: &[String]) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate().context("generating the CA key")?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Postern");
    let suffix: [u8; 4] = rand::random();
    name.push(
        DnType::CommonName,
        format!("Postern interception CA {}", hex::encode(suffix)),
    );
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    if !names.is_empty() {
        // Without an address subtree a constraint on names leaves addresses unconstrained
        // (RFC 5280 §4.2.1.10 applies each to its own name form): all of them are excluded.
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: names
                .iter()
                .map(|name| GeneralSubtree::DnsName(name.clone()))
                .collect(),
            excluded_subtrees: vec![
                GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
                GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
            ],
        });
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params
        .self_signed(&key)
        .context("signing the CA certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_with_a_private_key_and_issues_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let first = export_ca_pem(dir.path(), &[]).unwrap();
        let again = export_ca_pem(dir.path(), &[]).unwrap();
        assert_eq!(first, again, "the CA is generated once");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(CA_DIR).join(CA_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let ca = InterceptCa::load_or_create(dir.path(), &[]).unwrap();
        let config = ca.server_config("api.example.test").unwrap();
        assert!(Arc::ptr_eq(
            &config,
            &ca.server_config("API.example.test").unwrap()
        ));
        assert_eq!(config.alpn_protocols[0], b"h2");
    }

    /// Every leaf has a serial of its own: clients such as NSS refuse a second certificate with
    /// the issuer and serial of one they have seen. They share one session cache.
    #[test]
    fn leaves_have_serials_of_their_own_and_share_one_session_cache() {
        let dir = tempfile::tempdir().unwrap();
        let ca = InterceptCa::load_or_create(dir.path(), &[]).unwrap();
        let serial = |host: &str| {
            let der = ca.leaf(host).unwrap();
            let (_, leaf) = x509_parser::parse_x509_certificate(&der).unwrap();
            leaf.tbs_certificate.raw_serial().to_vec()
        };
        let a = serial("a.example.test");
        assert_ne!(a, serial("b.example.test"));
        assert_ne!(
            a,
            serial("a.example.test"),
            "a re-issued leaf has a new serial"
        );
        assert_eq!(a.len(), 16);
        let one = ca.server_config("a.example.test").unwrap();
        let two = ca.server_config("b.example.test").unwrap();
        let storage =
            |config: &rustls::ServerConfig| Arc::as_ptr(&config.session_storage).cast::<u8>();
        assert_eq!(storage(&one), storage(&two));
    }

    /// A key that is not its certificate's is refused at load, with what to do.
    #[test]
    fn a_ca_key_that_is_not_its_certificates_is_refused() {
        let (one, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        export_ca_pem(one.path(), &[]).unwrap();
        export_ca_pem(other.path(), &[]).unwrap();
        std::fs::copy(
            other.path().join(CA_DIR).join(CA_KEY_FILE),
            one.path().join(CA_DIR).join(CA_KEY_FILE),
        )
        .unwrap();
        let error = format!(
            "{:#}",
            InterceptCa::load_or_create(one.path(), &[]).err().unwrap()
        );
        assert!(
            error.contains("is not the key of its certificate"),
            "{error}"
        );
    }

    /// Of two first creations at once, one CA wins and both get it; no temporary directory is
    /// left behind.
    #[test]
    fn concurrent_first_creations_agree_on_one_ca() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || export_ca_pem(&path, &[]).unwrap())
            })
            .collect();
        let pems: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(pems.iter().all(|pem| *pem == pems[0]));
        let names: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(CA_DIR)]);
        assert!(InterceptCa::load_or_create(&path, &[]).is_ok());
    }

    /// What an older version's crash left in `ca/` (a temporary key, no CA) does not stop a new
    /// CA from being made there.
    #[test]
    fn an_older_versions_leftovers_do_not_block_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(CA_DIR)).unwrap();
        let leftover = dir.path().join(CA_DIR).join(format!("{CA_KEY_FILE}.tmp"));
        std::fs::write(&leftover, "half a key").unwrap();
        let pem = export_ca_pem(dir.path(), &[]).unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE"));
        assert!(!leftover.exists());
        assert!(InterceptCa::load_or_create(dir.path(), &[]).is_ok());
    }

    /// Whether rustls's verifier (webpki), trusting only the CA, takes `leaf` for `host`.
    fn verifies(
        ca: &InterceptCa,
        leaf: &CertificateDer<'static>,
        host: &str,
    ) -> Result<(), String> {
        use rustls::client::danger::ServerCertVerifier as _;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.ca_der.clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crate::tls::crypto_provider(),
        )
        .build()
        .unwrap();
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
        verifier
            .verify_server_cert(leaf, &[], &name, &[], rustls::pki_types::UnixTime::now())
            .map(drop)
            .map_err(|error| error.to_string())
    }

    /// A CA made with names carries them as critical constraints that a real verifier
    /// enforces: a leaf its key signs for another name, or an address, is refused (what a
    /// stolen key could mint), and Postern itself issues none. Without names the same leaves
    /// verify, so the refusals are the constraints' doing.
    #[test]
    fn a_ca_made_with_names_vouches_for_those_names_only() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["example.test".to_string(), "vendor.test".to_string()];
        let ca = InterceptCa::load_or_create(dir.path(), &names).unwrap();
        assert_eq!(ca.names(), names);
        for host in ["example.test", "api.example.test", "a.b.vendor.test"] {
            assert!(ca.vouches_for(host), "{host}");
            verifies(&ca, &ca.leaf(host).unwrap(), host).unwrap();
            ca.server_config(host).unwrap();
        }
        for host in [
            "evil.test",
            "notexample.test",
            "example.test.evil",
            "127.0.0.1",
        ] {
            assert!(!ca.vouches_for(host), "{host}");
            let error = verifies(&ca, &ca.leaf(host).unwrap(), host).unwrap_err();
            assert!(
                error.contains("NameConstraint") || error.contains("name constraint"),
                "{host}: {error}"
            );
        }

        let open = tempfile::tempdir().unwrap();
        let unconstrained = InterceptCa::load_or_create(open.path(), &[]).unwrap();
        assert!(unconstrained.names().is_empty());
        for host in ["evil.test", "127.0.0.1"] {
            assert!(unconstrained.vouches_for(host));
            verifies(&unconstrained, &unconstrained.leaf(host).unwrap(), host).unwrap();
        }
    }

    /// A CA's names are fixed when it is made: asking for others (more, fewer, or none on a CA
    /// made without) is refused with what to do; the same names in any order, or none asked
    /// for, take the CA as it is.
    #[test]
    fn a_cas_names_cannot_change() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["b.test".to_string(), "a.test".to_string()];
        export_ca_pem(dir.path(), &names).unwrap();
        let reordered = ["a.test".to_string(), "b.test".to_string()];
        assert_eq!(
            InterceptCa::load_or_create(dir.path(), &reordered)
                .unwrap()
                .names(),
            reordered
        );
        assert_eq!(
            InterceptCa::load_or_create(dir.path(), &[])
                .unwrap()
                .names(),
            reordered
        );
        for other in [
            &["a.test".to_string()][..],
            &["a.test".to_string(), "c.test".to_string()],
        ] {
            let error = format!(
                "{:#}",
                InterceptCa::load_or_create(dir.path(), other)
                    .err()
                    .unwrap()
            );
            assert!(error.contains("has the names a.test, b.test"), "{error}");
            assert!(error.contains("move the ca/ directory away"), "{error}");
        }
        let open = tempfile::tempdir().unwrap();
        export_ca_pem(open.path(), &[]).unwrap();
        let error = format!("{:#}", export_ca_pem(open.path(), &names).unwrap_err());
        assert!(error.contains("has no name constraints"), "{error}");
    }

    /// A CA put in ca/ by hand whose name constraints are of another shape than Postern's (a
    /// leading-dot name, an excluded name, a permitted address) is refused at load, not read as
    /// unconstrained or as other names.
    #[test]
    fn a_ca_with_constraints_postern_did_not_make_is_refused() {
        let shapes = [
            (
                vec![GeneralSubtree::DnsName(".example.test".into())],
                vec![],
            ),
            (
                vec![GeneralSubtree::DnsName("example.test".into())],
                vec![GeneralSubtree::DnsName("evil.example.test".into())],
            ),
            (
                vec![GeneralSubtree::IpAddress(CidrSubnet::V4(
                    [10, 0, 0, 0],
                    [255, 0, 0, 0],
                ))],
                vec![],
            ),
        ];
        for (permitted, excluded) in shapes {
            let dir = tempfile::tempdir().unwrap();
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params
                .distinguished_name
                .push(DnType::CommonName, "hand-made CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            params.name_constraints = Some(NameConstraints {
                permitted_subtrees: permitted,
                excluded_subtrees: excluded,
            });
            let cert = params.self_signed(&key).unwrap();
            std::fs::create_dir(dir.path().join(CA_DIR)).unwrap();
            std::fs::write(dir.path().join(CA_DIR).join(CA_CERT_FILE), cert.pem()).unwrap();
            crate::write_private_file(
                &dir.path().join(CA_DIR).join(CA_KEY_FILE),
                key.serialize_pem().as_bytes(),
            )
            .unwrap();
            let error = format!(
                "{:#}",
                InterceptCa::load_or_create(dir.path(), &[]).err().unwrap()
            );
            assert!(
                error.contains("of a shape Postern does not make"),
                "{error}"
            );
        }
    }

    #[test]
    fn half_a_ca_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        export_ca_pem(dir.path(), &[]).unwrap();
        std::fs::remove_file(dir.path().join(CA_DIR).join(CA_KEY_FILE)).unwrap();
        let error = format!("{:#}", export_ca_pem(dir.path(), &[]).unwrap_err());
        assert!(
            error.contains("incomplete") && error.contains(CA_KEY_FILE),
            "{error}"
        );
        assert!(error.contains("move the ca/ directory away"), "{error}");
    }
}
