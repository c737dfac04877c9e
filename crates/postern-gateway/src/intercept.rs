//! TLS interception for the forward proxy: Postern's own CA, generated on first run in
//! `<data_dir>/ca/` (key mode 0600), and leaf certificates issued per host on demand.
//!
//! A client that trusts the CA (`postern ca export` prints it) sees a certificate for the host it
//! asked for; one that does not refuses the handshake and nothing is forwarded. Leaves share one
//! key pair generated at start (in memory only), are valid for 30 days, and are re-issued after
//! 7 days; at most [`MAX_CACHED_LEAVES`] are cached (the older half is dropped when full).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
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

/// Postern's interception CA and its leaf cache.
pub struct InterceptCa {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    leaf_key: KeyPair,
    leaves: Mutex<HashMap<String, (Instant, Arc<rustls::ServerConfig>)>>,
}

impl InterceptCa {
    /// Loads the CA from `<data_dir>/ca/`, creating it on first run.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<InterceptCa> {
        let (cert_pem, key_pem) = ensure_ca_files(data_dir)?;
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
        Ok(InterceptCa {
            issuer,
            ca_der,
            leaf_key: KeyPair::generate().context("generating the leaf key")?,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// A TLS server config presenting a leaf for `host` (ALPN h2 and http/1.1).
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
        let leaf = params
            .signed_by(&self.leaf_key, &self.issuer)
            .context("signing a leaf certificate")?;
        let chain = vec![leaf.der().clone(), self.ca_der.clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| anyhow::anyhow!("TLS setup: {error}"))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|error| anyhow::anyhow!("interception certificate: {error}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn ca_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(CA_DIR)
}

/// The CA certificate PEM (for trust stores), creating the CA if it does not exist yet.
pub fn export_ca_pem(data_dir: &Path) -> anyhow::Result<String> {
    Ok(ensure_ca_files(data_dir)?.0)
}

/// Reads (certificate PEM, key PEM), generating both on first use.
fn ensure_ca_files(data_dir: &Path) -> anyhow::Result<(String, String)> {
    let dir = ca_dir(data_dir);
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let cert = std::fs::read_to_string(&cert_path)
                .with_context(|| format!("reading {}", cert_path.display()))?;
            let key = std::fs::read_to_string(&key_path)
                .with_context(|| format!("reading {}", key_path.display()))?;
            return Ok((cert, key));
        }
        (true, false) | (false, true) => anyhow::bail!(
            "the interception CA in {} is incomplete ({} is missing); restore it from backup, or move the ca/ directory away to have a new CA generated (clients must then trust the new one)",
            dir.display(),
            if cert_path.exists() { CA_KEY_FILE } else { CA_CERT_FILE }
        ),
        (false, false) => {}
    }
    // A data_dir made here (`postern ca export` before any `serve`) is private, as `serve`
    // makes it.
    if let Some(data_dir) = dir.parent().filter(|parent| !parent.exists()) {
        crate::create_private_dir(data_dir)?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
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
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params
        .self_signed(&key)
        .context("signing the CA certificate")?;
    let key_pem = key.serialize_pem();
    // Both files under temporary names, then renamed: a crash never leaves half a CA.
    let key_tmp = dir.join(format!("{CA_KEY_FILE}.tmp"));
    let cert_tmp = dir.join(format!("{CA_CERT_FILE}.tmp"));
    let _ = std::fs::remove_file(&key_tmp);
    crate::write_private_file(&key_tmp, key_pem.as_bytes())?;
    std::fs::write(&cert_tmp, cert.pem())
        .with_context(|| format!("writing {}", cert_tmp.display()))?;
    std::fs::rename(&key_tmp, &key_path)
        .with_context(|| format!("writing {}", key_path.display()))?;
    std::fs::rename(&cert_tmp, &cert_path)
        .with_context(|| format!("writing {}", cert_path.display()))?;
    tracing::info!(path = %cert_path.display(), "generated the interception CA (trust it with `postern ca export`)");
    Ok((cert.pem(), key_pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_with_a_private_key_and_issues_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let first = export_ca_pem(dir.path()).unwrap();
        let again = export_ca_pem(dir.path()).unwrap();
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
        let ca = InterceptCa::load_or_create(dir.path()).unwrap();
        let config = ca.server_config("api.example.test").unwrap();
        assert!(Arc::ptr_eq(
            &config,
            &ca.server_config("API.example.test").unwrap()
        ));
        assert_eq!(config.alpn_protocols[0], b"h2");
    }

    #[test]
    fn half_a_ca_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        export_ca_pem(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(CA_DIR).join(CA_KEY_FILE)).unwrap();
        let error = format!("{:#}", export_ca_pem(dir.path()).unwrap_err());
        assert!(
            error.contains("incomplete") && error.contains(CA_KEY_FILE),
            "{error}"
        );
        assert!(error.contains("move the ca/ directory away"), "{error}");
    }
}
