//! Certificates for the peer link: one private CA and one certificate per node.
//!
//! [`generate`] writes, into one directory:
//! - `ca.pem` / `ca-key.pem`: a self-signed CA (path length 0: it signs node certificates only);
//! - per node `NAME.pem` / `NAME-key.pem`: a certificate signed by that CA whose subject
//!   alternative names are the DNS name `NAME` and the IP `127.0.0.1`, with extended key usage
//!   serverAuth + clientAuth, because each node is both the TLS server and the TLS client of the
//!   peer link (see [`super::tls`]).
//!
//! If `ca.pem` and `ca-key.pem` already exist, that CA signs the new node certificates, so a node
//! can be added (or one node's certificate renewed) without re-issuing the others. Every
//! certificate written is first checked against `ca.pem` as a client and as a server for its
//! name, so a CA this module cannot sign for is reported instead of producing certificates that
//! would fail at the first handshake.
//!
//! Not done here: revocation, renewal reminders, encrypted key files, CAs made by other tools
//! (reuse relies on the CA's subject being the one this module writes; see [`ca_params`]).
//!
//! Invariants: key files are created with mode 0600; each file is written to a temporary name and
//! renamed, so a crash never leaves half a PEM behind; a CA whose certificate or key is missing
//! is never silently replaced (that would orphan the certificates it already signed).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;

/// File name of the CA certificate inside the output directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the output directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Subject common name of the CA; reuse of an existing CA depends on it never changing.
const CA_COMMON_NAME: &str = "geomirror peer CA";
/// How long a node certificate is valid.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long the CA is valid: longer than a node certificate, so a node added years after the CA
/// was made still gets a full term before the CA itself expires.
pub const CA_CERT_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// Certificates start being valid this long before they are made, so a peer whose clock is
/// somewhat behind does not reject a fresh certificate as "not valid yet".
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(24 * 3600);
/// The IP address every node certificate also names, for tests and demos on one machine.
const LOOPBACK_SAN: &str = "127.0.0.1";

/// Why certificates could not be generated. Each variant names the file or node concerned.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A node name is not usable as a DNS name or would collide with another file.
    #[error("node name `{name}` is not usable: {reason}")]
    InvalidNodeName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Only one of `ca.pem` / `ca-key.pem` exists: making a new CA would orphan the certificates
    /// the old one signed, so stop and let the operator decide.
    #[error(
        "{present} exists but {missing} does not; restore {missing}, or remove {present} to create a new CA (existing node certificates will then stop working)"
    )]
    CaIncomplete {
        /// The CA file that exists.
        present: PathBuf,
        /// The CA file that is missing.
        missing: PathBuf,
    },
    /// The output directory could not be created.
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// An existing file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The existing CA certificate file holds no usable certificate.
    #[error("{path} does not contain a usable CA certificate: {reason}")]
    BadCaCert {
        /// The CA certificate file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The existing CA key file holds no usable private key.
    #[error("{path} does not contain a usable CA private key: {source}")]
    BadCaKey {
        /// The CA key file.
        path: PathBuf,
        /// The underlying error.
        source: rcgen::Error,
    },
    /// A certificate signed with `ca-key.pem` does not verify against `ca.pem`: the key belongs
    /// to another CA, or `ca.pem` was not made by this tool.
    #[error(
        "cannot sign for the CA in {ca_cert}: a test certificate signed with {ca_key} does not verify against it ({reason}); the key belongs to another CA, or the CA was not made by `geomirror certs`"
    )]
    CaNotReusable {
        /// The CA certificate file.
        ca_cert: PathBuf,
        /// The CA key file.
        ca_key: PathBuf,
        /// The verification error.
        reason: String,
    },
    /// rcgen failed to make a key or certificate.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// What was being generated (`CA key`, `certificate for site-a`, ...).
        what: String,
        /// The underlying error.
        source: rcgen::Error,
    },
}

/// Writes the CA (unless `out_dir` already holds one) and a certificate and key for each node
/// in `nodes`, signed by that CA. Existing files for the same node are replaced.
///
/// Returns the paths written, CA files first (only if the CA was created), then per node the
/// certificate and its key.
pub fn generate(out_dir: &Path, nodes: &[String]) -> Result<Vec<PathBuf>, CertsError> {
    for (i, name) in nodes.iter().enumerate() {
        validate_node_name(name)?;
        if nodes[..i].contains(name) {
            return Err(CertsError::InvalidNodeName { name: name.clone(), reason: "listed twice" });
        }
    }
    fs::create_dir_all(out_dir).map_err(|source| CertsError::CreateDir { path: out_dir.to_path_buf(), source })?;

    let ca_cert_path = out_dir.join(CA_CERT_FILE);
    let ca_key_path = out_dir.join(CA_KEY_FILE);
    let mut written = Vec::new();

    let (ca_key, ca_cert_der) = match (exists(&ca_cert_path)?, exists(&ca_key_path)?) {
        (true, true) => load_ca(&ca_cert_path, &ca_key_path)?,
        (false, false) => {
            let ca_key = generate_key("CA key")?;
            let ca_cert =
                ca_params().self_signed(&ca_key).map_err(|source| CertsError::Generate { what: "CA certificate".to_owned(), source })?;
            // Key first: a crash in between leaves `CaIncomplete`, never a CA without its key
            // that node certificates were already issued from.
            write_file(&ca_key_path, ca_key.serialize_pem().as_bytes(), KEY_FILE_MODE)?;
            write_file(&ca_cert_path, ca_cert.pem().as_bytes(), CERT_FILE_MODE)?;
            written.push(ca_cert_path.clone());
            written.push(ca_key_path.clone());
            (ca_key, ca_cert.der().clone())
        }
        (true, false) => {
            return Err(CertsError::CaIncomplete { present: ca_cert_path, missing: ca_key_path });
        }
        (false, true) => {
            return Err(CertsError::CaIncomplete { present: ca_key_path, missing: ca_cert_path });
        }
    };

    let checker = CaChecker::new(&ca_cert_path, ca_cert_der)?;
    let issuer = Issuer::new(ca_params(), ca_key);

    for name in nodes {
        let key = generate_key(&format!("key for {name}"))?;
        let cert = node_params(name)
            .and_then(|params| params.signed_by(&key, &issuer))
            .map_err(|source| CertsError::Generate { what: format!("certificate for {name}"), source })?;
        checker.check(cert.der(), name).map_err(|reason| CertsError::CaNotReusable {
            ca_cert: ca_cert_path.clone(),
            ca_key: ca_key_path.clone(),
            reason,
        })?;
        let cert_path = out_dir.join(format!("{name}.pem"));
        let key_path = out_dir.join(format!("{name}-key.pem"));
        write_file(&key_path, key.serialize_pem().as_bytes(), KEY_FILE_MODE)?;
        write_file(&cert_path, cert.pem().as_bytes(), CERT_FILE_MODE)?;
        written.push(cert_path);
        written.push(key_path);
    }
    Ok(written)
}

const KEY_FILE_MODE: u32 = 0o600;
const CERT_FILE_MODE: u32 = 0o644;

/// Node names become DNS SANs and file names; refuse anything that is not a plain DNS name or
/// that would overwrite the CA files or another node's key.
fn validate_node_name(name: &str) -> Result<(), CertsError> {
    let invalid = |reason| CertsError::InvalidNodeName { name: name.to_owned(), reason };
    match ServerName::try_from(name) {
        Ok(ServerName::DnsName(_)) => {}
        Ok(_) => {
            return Err(invalid("it is an IP address, expected a DNS name such as `site-a`"));
        }
        Err(_) => {
            return Err(invalid("it is not a valid DNS name, expected e.g. `site-a`"));
        }
    }
    if name.eq_ignore_ascii_case("ca") || name.eq_ignore_ascii_case("ca-key") {
        return Err(invalid("its files would overwrite the CA files"));
    }
    if name.ends_with("-key") {
        return Err(invalid("names ending in `-key` clash with the key file of another node"));
    }
    Ok(())
}

/// The CA's parameters. When reusing an existing CA these are rebuilt rather than parsed from
/// `ca.pem` (that would need rcgen's x509-parser feature): the subject must stay byte-identical
/// to the one written when the CA was made, which [`CaChecker`] verifies.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SKEW_ALLOWANCE).into();
    params.not_after = (now + CA_CERT_VALIDITY).into();
    params
}

fn node_params(name: &str) -> Result<CertificateParams, rcgen::Error> {
    // `new` turns "127.0.0.1" into an IP SAN and the name into a DNS SAN.
    let mut params = CertificateParams::new(vec![name.to_owned(), LOOPBACK_SAN.to_owned()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    // Key encipherment too: QEMU (gnutls) refuses a client certificate without it.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SKEW_ALLOWANCE).into();
    params.not_after = (now + NODE_CERT_VALIDITY).into();
    Ok(params)
}

fn generate_key(what: &str) -> Result<KeyPair, CertsError> {
    // ECDSA P-256, signed with ring: supported by rustls' ring provider on both sides.
    KeyPair::generate().map_err(|source| CertsError::Generate { what: what.to_owned(), source })
}

fn load_ca(cert_path: &Path, key_path: &Path) -> Result<(KeyPair, CertificateDer<'static>), CertsError> {
    let cert_pem = read_to_string(cert_path)?;
    let key_pem = read_to_string(key_path)?;
    let bad_cert = |reason: String| CertsError::BadCaCert { path: cert_path.to_path_buf(), reason };
    let cert = match CertificateDer::pem_slice_iter(cert_pem.as_bytes()).next() {
        Some(Ok(cert)) => cert,
        Some(Err(e)) => return Err(bad_cert(format!("malformed PEM: {e}"))),
        None => return Err(bad_cert("no `BEGIN CERTIFICATE` block".to_owned())),
    };
    let key = KeyPair::from_pem(&key_pem).map_err(|source| CertsError::BadCaKey { path: key_path.to_path_buf(), source })?;
    Ok((key, cert))
}

/// Verifies freshly signed node certificates against the CA certificate as read from disk,
/// exactly as the peers will: as a client certificate, and as a server certificate for the
/// node's name.
struct CaChecker {
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

impl CaChecker {
    fn new(ca_path: &Path, ca_cert: CertificateDer<'static>) -> Result<Self, CertsError> {
        let bad_cert = |reason: String| CertsError::BadCaCert { path: ca_path.to_path_buf(), reason };
        let mut roots = RootCertStore::empty();
        roots.add(ca_cert).map_err(|e| bad_cert(e.to_string()))?;
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build().map_err(|e| bad_cert(e.to_string()))?;
        let server = WebPkiServerVerifier::builder_with_provider(roots, provider).build().map_err(|e| bad_cert(e.to_string()))?;
        Ok(Self { client, server })
    }

    fn check(&self, cert: &CertificateDer<'_>, name: &str) -> Result<(), String> {
        let now = UnixTime::now();
        self.client.verify_client_cert(cert, &[], now).map_err(|e| e.to_string())?;
        let server_name = ServerName::try_from(name).map_err(|e| e.to_string())?;
        self.server.verify_server_cert(cert, &[], &server_name, &[], now).map_err(|e| e.to_string())?;
        Ok(())
    }
}

fn exists(path: &Path) -> Result<bool, CertsError> {
    path.try_exists().map_err(|source| CertsError::Read { path: path.to_path_buf(), source })
}

fn read_to_string(path: &Path) -> Result<String, CertsError> {
    fs::read_to_string(path).map_err(|source| CertsError::Read { path: path.to_path_buf(), source })
}

/// Writes `contents` to a temporary file with `mode`, syncs it and renames it over `path`, so
/// readers see either the old file or the complete new one, and a replaced key file never keeps
/// looser permissions from before.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertsError> {
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let write = || -> io::Result<()> {
        // A stale temporary file from a crash may have other permissions: start afresh.
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|source| {
        let _ = fs::remove_file(&tmp);
        CertsError::Write { path: path.to_path_buf(), source }
    })
}

#[cfg(test)]
mod tests {
    //! Goal: generated files have the promised names, SANs, usages and permissions, and an
    //! existing CA is reused. Method: generate into temp dirs and verify with rustls' verifiers.

    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn read_cert(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).expect("read certificate")
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn generate_writes_ca_and_node_files_with_private_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        let written = generate(dir.path(), &names(&["site-a", "site-b"])).unwrap();
        let expected: Vec<PathBuf> = ["ca.pem", "ca-key.pem", "site-a.pem", "site-a-key.pem", "site-b.pem", "site-b-key.pem"]
            .iter()
            .map(|f| dir.path().join(f))
            .collect();
        assert_eq!(written, expected);
        for path in &written {
            let is_key = path.to_string_lossy().ends_with("-key.pem");
            assert_eq!(mode(path), if is_key { 0o600 } else { 0o644 }, "{path:?}");
        }
        // Nothing temporary left behind.
        let leftovers: Vec<_> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n.to_string_lossy().starts_with('.')).collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn node_certificate_names_node_and_loopback_and_serves_both_roles() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &names(&["site-a"])).unwrap();
        let checker = CaChecker::new(&dir.path().join("ca.pem"), read_cert(&dir.path().join("ca.pem"))).unwrap();
        let cert = read_cert(&dir.path().join("site-a.pem"));
        checker.check(&cert, "site-a").unwrap();
        let now = UnixTime::now();
        let ip = ServerName::try_from("127.0.0.1").unwrap();
        checker.server.verify_server_cert(&cert, &[], &ip, &[], now).unwrap();
        let err = checker.check(&cert, "site-b").unwrap_err();
        assert!(err.contains("site-a"), "{err}");
    }

    #[test]
    fn generate_reuses_existing_ca_for_a_node_added_later() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &names(&["site-a", "site-b"])).unwrap();
        let ca_before = fs::read(dir.path().join("ca.pem")).unwrap();
        let ca_key_before = fs::read(dir.path().join("ca-key.pem")).unwrap();

        let written = generate(dir.path(), &names(&["site-c"])).unwrap();
        assert_eq!(written, vec![dir.path().join("site-c.pem"), dir.path().join("site-c-key.pem")]);
        assert_eq!(fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
        assert_eq!(fs::read(dir.path().join("ca-key.pem")).unwrap(), ca_key_before);

        let ca = dir.path().join("ca.pem");
        let checker = CaChecker::new(&ca, read_cert(&ca)).unwrap();
        for name in ["site-a", "site-b", "site-c"] {
            let cert = read_cert(&dir.path().join(format!("{name}.pem")));
            checker.check(&cert, name).unwrap();
        }
    }

    #[test]
    fn generate_refuses_a_ca_key_that_does_not_match_ca_pem() {
        let ours = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        generate(ours.path(), &[]).unwrap();
        generate(other.path(), &[]).unwrap();
        fs::copy(other.path().join("ca-key.pem"), ours.path().join("ca-key.pem")).unwrap();
        let err = generate(ours.path(), &names(&["site-a"])).unwrap_err();
        assert!(matches!(err, CertsError::CaNotReusable { .. }), "{err}");
        assert!(!ours.path().join("site-a.pem").exists());
    }

    #[test]
    fn generate_refuses_half_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &[]).unwrap();
        fs::remove_file(dir.path().join("ca-key.pem")).unwrap();
        let err = generate(dir.path(), &names(&["site-a"])).unwrap_err();
        match &err {
            CertsError::CaIncomplete { present, missing } => {
                assert_eq!(present, &dir.path().join("ca.pem"));
                assert_eq!(missing, &dir.path().join("ca-key.pem"));
            }
            other => panic!("expected CaIncomplete, got {other:?}"),
        }
        assert!(err.to_string().contains("ca-key.pem"), "{err}");
    }

    #[test]
    fn generate_refuses_garbage_ca_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
        fs::write(dir.path().join("ca-key.pem"), "not a key").unwrap();
        let err = generate(dir.path(), &names(&["site-a"])).unwrap_err();
        assert!(matches!(err, CertsError::BadCaCert { .. }), "{err}");
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }

    #[test]
    fn generate_refuses_unusable_node_names() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "ca", "ca-key", "site-a-key", "../etc", "a b", "127.0.0.1"] {
            let err = generate(dir.path(), &names(&[bad])).unwrap_err();
            assert!(matches!(&err, CertsError::InvalidNodeName { name, .. } if name == bad), "{bad:?}: {err}");
        }
        let err = generate(dir.path(), &names(&["site-a", "site-a"])).unwrap_err();
        assert!(matches!(err, CertsError::InvalidNodeName { .. }), "{err}");
        // Nothing was written for refused input.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
