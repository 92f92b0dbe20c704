//! Certificates and TLS configuration: the cluster CA, node bundles with a role, and rustls
//! configs for mutual authentication (ring provider only).
//!
//! A node certificate carries its name in the subject CN and its role in the subject OU; a
//! server reads the role of the peer from the verified certificate before serving a request.

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Meta,
    Chunk,
    Client,
    Admin,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Meta => "meta",
            Role::Chunk => "chunk",
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        Ok(match s {
            "meta" => Role::Meta,
            "chunk" => Role::Chunk,
            "client" => Role::Client,
            "admin" => Role::Admin,
            other => return Err(TlsError::BadRole(other.to_string())),
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid PEM {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("unknown role '{0}' (expected meta, chunk, client or admin)")]
    BadRole(String),
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("peer certificate: {0}")]
    Peer(String),
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io { path: path.to_owned(), source })
}

fn write(path: &Path, data: &str, private: bool) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io { path: path.to_owned(), source };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    std::io::Write::write_all(&mut f, data.as_bytes()).map_err(io)
}

fn mkdir(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io { path: dir.to_owned(), source })
}

/// `tessera cert init CA_DIR`: write `ca.crt` and `ca.key`.
pub fn init_ca(dir: &Path) -> Result<(), TlsError> {
    mkdir(dir)?;
    let key_path = dir.join("ca.key");
    if key_path.exists() {
        return Err(TlsError::Exists(key_path));
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    // A distinct name per CA, so a certificate from another cluster reads as "unknown issuer".
    let tag: u64 = rand::random();
    params.distinguished_name.push(DnType::CommonName, format!("Tessera cluster CA {tag:016x}"));
    params.distinguished_name.push(DnType::OrganizationName, "Tessera");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write(&dir.join("ca.crt"), &cert.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)
}

/// `tessera cert issue`: write `ca.crt`, `node.crt`, `node.key` into `node_dir`.
pub fn issue(ca_dir: &Path, node_dir: &Path, name: &str, role: Role, hosts: &[String]) -> Result<(), TlsError> {
    let ca_pem = read(&ca_dir.join("ca.crt"))?;
    let ca_key = KeyPair::from_pem(&read(&ca_dir.join("ca.key"))?)
        .map_err(|_| TlsError::Pem { path: ca_dir.join("ca.key"), what: "private key" })?;
    let ca_params = CertificateParams::from_ca_cert_pem(&ca_pem)
        .map_err(|_| TlsError::Pem { path: ca_dir.join("ca.crt"), what: "certificate" })?;
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let mut params = CertificateParams::new(hosts.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.distinguished_name.push(DnType::OrganizationalUnitName, role.as_str());
    params.extended_key_usages = usages(role);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
    mkdir(node_dir)?;
    write(&node_dir.join("ca.crt"), &ca_pem, false)?;
    write(&node_dir.join("node.crt"), &cert.pem(), false)?;
    write(&node_dir.join("node.key"), &key.serialize_pem(), true)
}

/// Extended key usages by role: only servers may act as TLS servers, so a client or admin
/// certificate (even one issued with `--host`) cannot pose as a chunk or metadata server.
fn usages(role: Role) -> Vec<ExtendedKeyUsagePurpose> {
    match role {
        Role::Meta | Role::Chunk => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        Role::Client | Role::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
    }
}

/// A node's bundle, as loaded from `--certs NODE_DIR`.
#[derive(Clone)]
pub struct NodeCerts {
    pub dir: PathBuf,
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    pub identity: Identity,
}

impl fmt::Debug for NodeCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeCerts({}, {:?})", self.dir.display(), self.identity)
    }
}

/// Who a certificate belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    /// BLAKE3 of the certificate (DER): tells apart two certificates with the same name.
    pub fingerprint: [u8; 32],
    /// The peer's address, when known (set by the server for each connection).
    pub addr: Option<std::net::SocketAddr>,
}

impl NodeCerts {
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let pem_err = |file: &str, what| TlsError::Pem { path: dir.join(file), what };
        let ca = CertificateDer::from_pem_slice(read(&dir.join("ca.crt"))?.as_bytes()).map_err(|_| pem_err("ca.crt", "certificate"))?;
        let chain: Vec<_> = CertificateDer::pem_slice_iter(read(&dir.join("node.crt"))?.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| pem_err("node.crt", "certificate"))?;
        if chain.is_empty() {
            return Err(pem_err("node.crt", "certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(read(&dir.join("node.key"))?.as_bytes()).map_err(|_| pem_err("node.key", "private key"))?;
        let identity = identity_of(&chain[0])?;
        Ok(NodeCerts { dir: dir.to_owned(), ca, chain, key: Arc::new(key), identity })
    }

    fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(roots)
    }

    /// A secret that stays the same across restarts of this node, for QUIC stateless resets:
    /// a node restarted after a crash can then tell its peers at once that their connections
    /// to the old process are gone, instead of leaving them to time out (5 s). Derived from
    /// the private key, so it is as secret as the key and needs no file of its own.
    pub fn reset_secret(&self) -> [u8; 32] {
        blake3::derive_key("tessera 2026-12 QUIC stateless reset key", self.key.secret_der())
    }

    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![crate::proto::ALPN.to_vec()];
        Ok(cfg)
    }

    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![crate::proto::ALPN.to_vec()];
        Ok(cfg)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Name (CN) and role (OU) of a verified certificate.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, TlsError> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| TlsError::Peer(e.to_string()))?;
    let subject = x.subject();
    let name = subject.iter_common_name().next().and_then(|a| a.as_str().ok()).unwrap_or("").to_string();
    let role = subject
        .iter_organizational_unit()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or_else(|| TlsError::Peer("certificate has no role (OU)".into()))?
        .parse()?;
    Ok(Identity { name, role, fingerprint: *blake3::hash(cert.as_ref()).as_bytes(), addr: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_and_load() {
        let d = std::env::temp_dir().join(format!("tessera-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        init_ca(&d.join("ca")).unwrap();
        assert!(matches!(init_ca(&d.join("ca")), Err(TlsError::Exists(_))));
        issue(&d.join("ca"), &d.join("n1"), "chunk-1", Role::Chunk, &["127.0.0.1".into(), "localhost".into()]).unwrap();
        let c = NodeCerts::load(&d.join("n1")).unwrap();
        assert_eq!((c.identity.name.as_str(), c.identity.role), ("chunk-1", Role::Chunk));
        c.server_config().unwrap();
        c.client_config().unwrap();
        assert!(NodeCerts::load(&d.join("missing")).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// (server auth, client auth) of the extended key usage of `dir/node.crt`.
    fn eku_of(dir: &Path) -> (bool, bool) {
        let pem = std::fs::read(dir.join("node.crt")).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let eku = x.extended_key_usage().unwrap().expect("an extended key usage extension").value;
        (eku.server_auth, eku.client_auth)
    }

    #[test]
    fn only_servers_get_server_usage() {
        let d = std::env::temp_dir().join(format!("tessera-tls-eku-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        init_ca(&d.join("ca")).unwrap();
        let hosts = ["127.0.0.1".to_string()];
        for (role, server) in [(Role::Meta, true), (Role::Chunk, true), (Role::Client, false), (Role::Admin, false)] {
            issue(&d.join("ca"), &d.join(role.as_str()), role.as_str(), role, &hosts).unwrap();
            assert_eq!(eku_of(&d.join(role.as_str())), (server, true), "extended key usage (server auth, client auth) of a {role} certificate");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
