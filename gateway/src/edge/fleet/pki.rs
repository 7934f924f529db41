//! The fleet's mutual TLS: a CA of the fleet's own (`gateway fleet ca`), one certificate per
//! host whose DNS name is the host's id (`gateway fleet cert HOST`), and the rustls
//! configurations of the fleet listener (a client certificate chained to the fleet CA is
//! required) and of the client that forwards to a peer (the peer's certificate must name the
//! host that the sandbox's record names, which the server name of the connection is).
//!
//! TLS 1.3 only: every member runs this gateway, there is no older client to serve.

use super::super::tls::{TlsError, ca_params_named, provider, write_file};
use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose};
use rustls::{ClientConfig, RootCertStore, ServerConfig, server::WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

/// The CA's file names in the fleet's directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA's key (keep it off the hosts: only `gateway fleet cert` needs it).
pub const CA_KEY: &str = "ca-key.pem";
/// Days a host certificate is valid.
const HOST_CERT_DAYS: i64 = 825;
/// Days the CA is valid.
const CA_DAYS: i64 = 3650;

/// The rustls configurations of one fleet member.
pub struct FleetTls {
    /// The fleet listener's: client certificates required.
    pub server: Arc<ServerConfig>,
    /// Forwarding to a peer, ALPN `h2`.
    pub client_h2: Arc<ClientConfig>,
    /// Forwarding an upgrade (WebSocket…) to a peer, ALPN `http/1.1`.
    pub client_h1: Arc<ClientConfig>,
}

fn file_err(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::File { path: path.to_path_buf(), reason: reason.into() }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, format!("cannot read PEM certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("bad PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(file_err(path, "no certificate in the file"));
    }
    Ok(chain)
}

/// The DNS names of a certificate (lower-case).
pub fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    webpki::EndEntityCert::try_from(cert)
        .map(|c| c.valid_dns_names().map(|n| n.to_ascii_lowercase()).collect())
        .unwrap_or_default()
}

impl FleetTls {
    /// Loads the fleet CA, this host's certificate and key; the certificate must name `host`.
    pub fn load(ca: &Path, cert: &Path, key: &Path, host: &str) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in read_chain(ca)? {
            roots.add(c).map_err(|e| file_err(ca, format!("not a usable CA certificate: {e}")))?;
        }
        let roots = Arc::new(roots);
        let chain = read_chain(cert)?;
        let names = dns_names(&chain[0]);
        if !names.iter().any(|n| n == host) {
            return Err(file_err(
                cert,
                format!(
                    "names {names:?}, not this host's fleet.host {host:?} (make one with `gateway fleet cert {host}`)"
                ),
            ));
        }
        let private = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| file_err(key, format!("cannot read a PEM private key: {e}")))?;
        let pair = |reason: String| TlsError::Pair { cert: cert.to_path_buf(), key: key.to_path_buf(), reason };
        let provider = Arc::new(provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| file_err(ca, format!("cannot verify clients with it: {e}")))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), private.clone_key())
            .map_err(|e| pair(e.to_string()))?;
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = |alpn: &[u8]| -> Result<Arc<ClientConfig>, TlsError> {
            let mut c = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_root_certificates(roots.clone())
                .with_client_auth_cert(chain.clone(), private.clone_key())
                .map_err(|e| pair(e.to_string()))?;
            c.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(c))
        };
        Ok(Self { server: Arc::new(server), client_h2: client(b"h2")?, client_h1: client(b"http/1.1")? })
    }
}

fn ca_params() -> CertificateParams {
    let mut params = ca_params_named("gateway fleet CA");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(CA_DAYS);
    params
}

/// Creates the fleet CA in `dir` (`ca.pem`, `ca-key.pem`); an existing one is kept. Returns
/// the certificate's path and whether it was created now.
pub fn make_ca(dir: &Path) -> Result<(PathBuf, bool), TlsError> {
    let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if cert.exists() || key.exists() {
        if !(cert.is_file() && key.is_file()) {
            return Err(file_err(dir, format!("holds one of {CA_CERT} and {CA_KEY} without the other")));
        }
        return Ok((cert, false));
    }
    fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.to_path_buf(), source })?;
    let pair = KeyPair::generate()?;
    let ca = ca_params().self_signed(&pair)?;
    write_file(&key, pair.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert, ca.pem().as_bytes(), 0o644)?;
    Ok((cert, true))
}

/// Issues the certificate of fleet host `host` with the CA in `dir`: `{host}.pem` (the
/// certificate, then the CA) and `{host}.key`, for both ends of the fleet's mutual TLS.
pub fn make_host_cert(dir: &Path, host: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let (ca_cert, ca_key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let key_pem = fs::read_to_string(&ca_key).map_err(|e| {
        file_err(&ca_key, format!("cannot read the fleet CA's key ({e}): run `gateway fleet ca` first"))
    })?;
    let ca_pair = KeyPair::from_pem(&key_pem).map_err(|e| file_err(&ca_key, format!("not a private key: {e}")))?;
    let ca_pem = fs::read_to_string(&ca_cert).map_err(|e| file_err(&ca_cert, format!("cannot read: {e}")))?;
    // The CA's name and key are what a certificate's issuer is made of.
    let issuer = Issuer::new(ca_params(), ca_pair);
    let mut params = CertificateParams::new(vec![host.to_string()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, host);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(HOST_CERT_DAYS);
    let pair = KeyPair::generate()?;
    let cert = params.signed_by(&pair, &issuer)?;
    let (cert_path, key_path) = (dir.join(format!("{host}.pem")), dir.join(format!("{host}.key")));
    write_file(&key_path, pair.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, format!("{}{ca_pem}", cert.pem()).as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_host_certificates_that_load_only_for_their_host() {
        let dir = std::env::temp_dir().join(format!("gateway-fleet-pki-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (ca, created) = make_ca(&dir).expect("ca");
        assert!(created);
        assert!(!make_ca(&dir).expect("again").1, "an existing CA is kept");
        let (cert, key) = make_host_cert(&dir, "host-a").expect("cert");
        assert!(FleetTls::load(&ca, &cert, &key, "host-a").is_ok());
        let e = FleetTls::load(&ca, &cert, &key, "host-b").err().expect("another host");
        assert!(e.to_string().contains("host-b"), "{e}");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
