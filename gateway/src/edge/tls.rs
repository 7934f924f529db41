//! TLS of the public listener: rustls (ring), TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`,
//! several certificates chosen by SNI, and a development CA generated once when no certificate
//! is configured.
//!
//! The certificate a connection was served decides which hosts it may ask for: a request whose
//! Host is not covered by that certificate's names is answered 421 (see [`CertEntry::covers`]).
//! SNI may differ from Host (the SDKs coalesce many sandbox hosts on one HTTP/2 connection whose
//! SNI is `any.{region}.{domain}`) as long as the certificate covers both.

use crate::config::{CertificateFiles, Config};
use arc_swap::ArcSwap;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

/// Problems loading or generating certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key does not belong to the certificate, or rustls refused it.
    #[error("certificate {cert} with key {key}: {reason}")]
    Pair {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing the development CA or certificate failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// rcgen failed.
    #[error("cannot generate the development certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// One certificate and the DNS names it covers (lower-case; `*.x` wildcards).
#[derive(Debug)]
pub struct CertEntry {
    names: Vec<String>,
    key: Arc<CertifiedKey>,
    source: String,
}

impl CertEntry {
    /// A certificate chain (leaf first) and its key; `source` names it in logs.
    pub fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>, source: &str) -> Result<Self, String> {
        let leaf = chain.first().ok_or("no certificate in the file")?;
        let parsed = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("cannot parse the certificate: {e}"))?;
        let names: Vec<String> = parsed.valid_dns_names().map(|n| n.to_ascii_lowercase()).collect();
        if names.is_empty() {
            return Err("the certificate has no DNS name in its subjectAltName".into());
        }
        let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| e.to_string())?;
        Ok(Self { names, key: Arc::new(key), source: source.to_string() })
    }

    /// The DNS names (SAN) of the certificate.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Where it came from (file path or "development").
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the certificate is valid for `host` (lower-case, no trailing dot, no port).
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| name_matches(n, host))
    }
}

/// RFC 6125 matching: exact, or `*.rest` matching exactly one non-empty left-most label.
pub fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(rest) => match host.split_once('.') {
            Some((label, host_rest)) => !label.is_empty() && host_rest == rest,
            None => false,
        },
        None => pattern == host,
    }
}

/// Every certificate of the listener, the default first.
#[derive(Debug)]
pub struct CertStore {
    entries: Vec<Arc<CertEntry>>,
}

impl CertStore {
    /// A store of these certificates (at least one; the first is the default).
    pub fn new(entries: Vec<CertEntry>) -> Option<Self> {
        if entries.is_empty() {
            return None;
        }
        Some(Self { entries: entries.into_iter().map(Arc::new).collect() })
    }

    /// Loads `[tls]`, or generates (first run) / reuses the development certificate.
    pub fn load(config: &Config) -> Result<Self, TlsError> {
        let mut files: Vec<CertificateFiles> = Vec::new();
        if !config.tls.cert.as_os_str().is_empty() {
            files.push(CertificateFiles { cert: config.tls.cert.clone(), key: config.tls.key.clone() });
        }
        files.extend(config.tls.certificates.iter().cloned());
        let entries = if files.is_empty() {
            vec![development_certificate(config)?]
        } else {
            files.iter().map(load_pair).collect::<Result<Vec<_>, _>>()?
        };
        for e in &entries {
            tracing::info!(source = %e.source, names = ?e.names, "TLS certificate loaded");
        }
        Self::new(entries).ok_or_else(|| TlsError::File { path: PathBuf::new(), reason: "no certificate".into() })
    }

    /// The certificate for this SNI: the first that covers it, else the default.
    pub fn select(&self, sni: Option<&str>) -> &Arc<CertEntry> {
        let default = &self.entries[0];
        let Some(sni) = sni else { return default };
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        self.entries.iter().find(|e| e.covers(&sni)).unwrap_or(default)
    }
}

/// The certificates in force, swapped whole by a reload (SIGHUP).
pub type SharedCerts = Arc<ArcSwap<CertStore>>;

/// Picks the certificate of each handshake from the [`CertStore`] in force.
#[derive(Debug)]
struct SniResolver(SharedCerts);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().select(hello.server_name()).key.clone())
    }
}

/// Reloads `[tls]` on SIGHUP: the new certificates are loaded (or the development certificate
/// re-checked) before anything changes; new handshakes then use them, open connections keep
/// theirs.
pub struct CertReloader(pub SharedCerts);

impl crate::lifecycle::Reloadable for CertReloader {
    fn prepare(&self, config: &Config) -> Result<Box<dyn FnOnce() + Send>, String> {
        let store = CertStore::load(config).map_err(|e| format!("[tls]: {e}"))?;
        let shared = self.0.clone();
        Ok(Box::new(move || shared.store(Arc::new(store))))
    }
}

/// The crypto provider: ring.
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The rustls server configuration: TLS 1.2+, ALPN h2 then http/1.1, certificates by SNI.
pub fn server_config(store: SharedCerts) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver(store)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's cipher suite order (the provider's, strongest first), not the client's: a
    // client cannot steer the choice towards the weakest suite both sides allow.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

fn load_pair(files: &CertificateFiles) -> Result<CertEntry, TlsError> {
    let file_err = |path: &Path, reason: String| TlsError::File { path: path.to_path_buf(), reason };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_err(&files.cert, format!("cannot read PEM certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(&files.cert, format!("bad PEM certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| file_err(&files.key, format!("cannot read a PEM private key: {e}")))?;
    CertEntry::new(chain, key, &files.cert.display().to_string()).map_err(|reason| TlsError::Pair {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason,
    })
}

/// Names of the development certificate.
pub fn development_names(config: &Config) -> Vec<String> {
    let (region, domain) = (&config.region, &config.domain);
    vec![
        format!("*.{region}.{domain}"),
        format!("*.{region}.preview.{domain}"),
        format!("*.preview.{domain}"),
        format!("api.{domain}"),
    ]
}

/// Paths of the development CA and certificate under `state.dir/tls/`.
pub struct DevPaths {
    /// `ca.pem`: what clients trust.
    pub ca: PathBuf,
    /// `ca-key.pem` (0600).
    pub ca_key: PathBuf,
    /// `cert.pem`: leaf then CA.
    pub cert: PathBuf,
    /// `key.pem` (0600).
    pub key: PathBuf,
}

impl DevPaths {
    /// Under `state_dir/tls/`.
    pub fn new(state_dir: &Path) -> Self {
        let dir = state_dir.join("tls");
        Self {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }
}

fn ca_params() -> CertificateParams {
    ca_params_named("gateway development CA")
}

/// The parameters of a CA of the gateway's own named `common_name` (the development CA, the
/// fleet's CA): what its certificate holds, and what a certificate it issues names as issuer.
pub(crate) fn ca_params_named(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "gateway");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

/// Generates the development CA and certificate once, then reuses them; a new certificate is
/// issued by the same CA when the configured domain or region changed.
fn development_certificate(config: &Config) -> Result<CertEntry, TlsError> {
    let paths = DevPaths::new(&config.state.dir);
    let names = development_names(config);
    let dir = paths.ca.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TlsError::Write { path: dir.to_path_buf(), source })?;

    let existing_ca = fs::read_to_string(&paths.ca_key).ok().and_then(|pem| KeyPair::from_pem(&pem).ok());
    let (ca_key, ca_is_new) = match existing_ca {
        Some(k) if paths.ca.is_file() => (k, false),
        _ => {
            let key = KeyPair::generate()?;
            let cert = ca_params().self_signed(&key)?;
            write_file(&paths.ca_key, key.serialize_pem().as_bytes(), 0o600)?;
            write_file(&paths.ca, cert.pem().as_bytes(), 0o644)?;
            tracing::info!(ca = %paths.ca.display(), "generated a development CA: clients must trust it");
            (key, true)
        }
    };
    if !ca_is_new
        && let Ok(entry) = load_pair(&CertificateFiles { cert: paths.cert.clone(), key: paths.key.clone() })
        && names.iter().all(|n| entry.names.contains(n))
    {
        return Ok(CertEntry { source: "development".into(), ..entry });
    }
    let mut params = CertificateParams::new(names.clone())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names[0].clone());
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let cert = params.signed_by(&key, &issuer)?;
    let ca_pem = fs::read_to_string(&paths.ca).map_err(|source| TlsError::Write { path: paths.ca.clone(), source })?;
    write_file(&paths.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&paths.cert, format!("{}{}", cert.pem(), ca_pem).as_bytes(), 0o644)?;
    tracing::info!(cert = %paths.cert.display(), names = ?names, "issued the development certificate");
    let entry = load_pair(&CertificateFiles { cert: paths.cert.clone(), key: paths.key.clone() })?;
    Ok(CertEntry { source: "development".into(), ..entry })
}

/// Writes a file atomically (temporary file, fsync, rename) with `mode`.
pub(crate) fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let err = |source| TlsError::Write { path: path.to_path_buf(), source };
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new().create(true).write(true).truncate(true).mode(mode).open(&tmp).map_err(err)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_one_label() {
        assert!(name_matches("*.local.gw.test", "sbx-a-b.local.gw.test"));
        assert!(name_matches("*.local.gw.test", "any.local.gw.test"));
        assert!(!name_matches("*.local.gw.test", "local.gw.test"));
        assert!(!name_matches("*.local.gw.test", "a.b.local.gw.test"));
        assert!(!name_matches("*.local.gw.test", ".local.gw.test"));
        assert!(!name_matches("*.local.gw.test", "x.evil.test"));
        assert!(name_matches("api.gw.test", "api.gw.test"));
        assert!(!name_matches("api.gw.test", "x.api.gw.test"));
    }

    #[test]
    fn development_certificate_is_generated_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("gw-tls-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut config = Config::default();
        config.state.dir = dir.clone();
        let store = CertStore::load(&config).expect("generate");
        let paths = DevPaths::new(&dir);
        let ca1 = fs::read(&paths.ca).expect("ca");
        let cert1 = fs::read(&paths.cert).expect("cert");
        assert!(store.select(Some("any.local.gw.test")).covers("sbx-a-b.local.gw.test"));
        assert!(store.select(None).covers("abc.local.preview.gw.test"));
        assert!(!store.select(None).covers("evil.test"));
        CertStore::load(&config).expect("reuse");
        assert_eq!(fs::read(&paths.cert).expect("cert"), cert1, "reused, not re-issued");
        // Another region: same CA, new certificate.
        config.region = "eu".into();
        let store = CertStore::load(&config).expect("re-issue");
        assert!(store.select(None).covers("x.eu.gw.test"));
        assert_eq!(fs::read(&paths.ca).expect("ca"), ca1);
        assert_ne!(fs::read(&paths.cert).expect("cert"), cert1);
        let _ = fs::remove_dir_all(&dir);
    }
}
