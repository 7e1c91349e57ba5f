//! Mutual TLS for the peer link.
//!
//! Both ends of a peer link authenticate each other: whichever node dials is the TLS client, the
//! other the TLS server, and each presents a certificate. Trust rests on one private CA (made by
//! [`super::certs::generate`]); a node's identity is its name (`site-a`), carried as a DNS name in
//! the certificate's subject alternative names (SANs).
//!
//! What is checked where:
//! - [`PeerTls::load`]: the PEM files exist and hold a certificate, a key and the CA; the key
//!   matches the certificate; and the certificate names this node (`own_name`), so a node
//!   started with another node's certificate refuses to start ([`TlsError::CertNameMismatch`]).
//! - [`PeerTls::connect`] (client): rustls verifies that the server's certificate chains to the
//!   CA and names the configured peer (the TLS server name is the peer's node name).
//! - [`PeerTls::accept`] (server): rustls requires a client certificate and verifies it chains to
//!   the CA ([`WebPkiClientVerifier`]). That only proves "some node of ours", so after the
//!   handshake the certificate must also name the configured peer, else
//!   [`TlsError::PeerNameMismatch`].
//!
//! TLS 1.3 only; session resumption is disabled so every connection verifies certificates in
//! full. Every handshake is bounded by [`HANDSHAKE_TIMEOUT`]. Crypto comes from rustls' `ring`
//! provider, passed explicitly to every config builder: the process default provider is never
//! used, so a second provider compiled in (e.g. aws-lc-rs) cannot make config building panic.
//!
//! In TLS 1.3 the client finishes its handshake before the server has checked the client's
//! certificate: when the server refuses us, [`PeerTls::connect`] still succeeds and the refusal
//! shows up as an alert or end of stream on the first read.
//!
//! Not done here: revocation (CRLs), certificate reloading, choosing which peer a connection
//! belongs to (one `PeerTls` serves one configured peer).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::Resumption;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Longest a TLS handshake may take, on either side; then it fails with
/// [`TlsError::HandshakeTimeout`]. Bounds how long a silent or stalled peer holds a connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS for the peer link could not be set up, or why a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A configured file does not exist.
    #[error("{what} file {path} does not exist")]
    FileMissing {
        /// Which file it is: `CA certificate`, `certificate` or `private key`.
        what: &'static str,
        /// The path as configured.
        path: PathBuf,
    },
    /// A configured file exists but could not be read.
    #[error("cannot read {what} file {path}: {source}")]
    FileUnreadable {
        /// Which file it is.
        what: &'static str,
        /// The path as configured.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file has a PEM block that cannot be decoded.
    #[error("{what} file {path} is not valid PEM: {source}")]
    MalformedPem {
        /// Which file it is.
        what: &'static str,
        /// The path as configured.
        path: PathBuf,
        /// The decoding error.
        source: pem::Error,
    },
    /// A certificate file holds no `BEGIN CERTIFICATE` block.
    #[error("{what} file {path} contains no certificate (no `BEGIN CERTIFICATE` block)")]
    NoCertificate {
        /// `CA certificate` or `certificate`.
        what: &'static str,
        /// The path as configured.
        path: PathBuf,
    },
    /// A key file holds no private key block.
    #[error("private key file {path} contains no private key (no `BEGIN ... PRIVATE KEY` block)")]
    NoPrivateKey {
        /// The path as configured.
        path: PathBuf,
    },
    /// A certificate in a file could not be parsed or used.
    #[error("{what} file {path} holds an unusable certificate: {source}")]
    BadCertificate {
        /// `CA certificate` or `certificate`.
        what: &'static str,
        /// The path as configured.
        path: PathBuf,
        /// Why rustls rejected it.
        source: rustls::Error,
    },
    /// The private key does not belong to the certificate, or is of an unsupported kind.
    #[error("private key {key} cannot be used with certificate {cert}: {source}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why rustls rejected the pair.
        source: rustls::Error,
    },
    /// A configured node name is not a DNS name, so it cannot be matched against certificates.
    #[error("node name `{name}` is not a valid DNS name")]
    InvalidNodeName {
        /// The name as configured.
        name: String,
    },
    /// Our own certificate does not name this node: refuse to start with another node's
    /// certificate.
    #[error(
        "certificate {path} is for {}, but this node is `{expected}`; refusing to start with another node's certificate",
        name_list(.presented)
    )]
    CertNameMismatch {
        /// The certificate file.
        path: PathBuf,
        /// This node's configured name.
        expected: String,
        /// The DNS names the certificate does carry.
        presented: Vec<String>,
    },
    /// rustls refused to build a configuration (should not happen with valid inputs).
    #[error("cannot build TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    /// The client-certificate verifier could not be built from the CA file.
    #[error("cannot use CA certificate file {path} to verify peers: {source}")]
    Verifier {
        /// The CA certificate file.
        path: PathBuf,
        /// Why rustls refused.
        source: rustls::server::VerifierBuilderError,
    },
    /// The peer's certificate does not chain to our CA.
    #[error("peer certificate is not signed by the configured CA: {source}")]
    NotSignedByCa {
        /// The verification error.
        source: rustls::Error,
    },
    /// The peer's certificate is signed by our CA but names another node.
    #[error("peer presented a certificate for {}, expected `{expected}`", name_list(.presented))]
    PeerNameMismatch {
        /// The configured peer name.
        expected: String,
        /// The DNS names the peer's certificate carries.
        presented: Vec<String>,
    },
    /// The peer's certificate is otherwise invalid (expired, not yet valid, wrong usage, ...).
    #[error("peer certificate rejected: {source}")]
    PeerCertificateInvalid {
        /// The verification error.
        source: rustls::Error,
    },
    /// The peer sent no certificate (cannot happen against a peer running this code).
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// The peer aborted the handshake, typically because it does not trust our certificate.
    #[error(
        "peer aborted the TLS handshake with alert `{alert:?}`; it probably does not accept our certificate (signed by another CA, or issued for another node name than it expects)"
    )]
    PeerRefused {
        /// The alert the peer sent.
        alert: AlertDescription,
    },
    /// The handshake did not finish within [`HANDSHAKE_TIMEOUT`].
    #[error("TLS handshake with peer did not finish within {after:?}")]
    HandshakeTimeout {
        /// The time limit that was hit.
        after: Duration,
    },
    /// The handshake failed for another reason (connection lost, protocol error).
    #[error("TLS handshake with peer failed: {0}")]
    Handshake(#[source] io::Error),
}

/// Formats certificate names for operators: "`site-c`", "`a`, `b`" or "no DNS name".
fn name_list(names: &[String]) -> String {
    if names.is_empty() {
        return "no DNS name".to_owned();
    }
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// TLS for the link to one peer: dials it with [`connect`](Self::connect) and admits it with
/// [`accept`](Self::accept), both authenticated against one CA. Cheap to clone.
#[derive(Clone)]
pub struct PeerTls {
    /// Client side: presents our certificate, verifies the server chains to the CA and names
    /// `peer_name`.
    connector: TlsConnector,
    /// Server side: presents our certificate, requires a client certificate chaining to the CA.
    acceptor: TlsAcceptor,
    /// The only node this link talks to; both directions check the peer's certificate names it.
    peer_name: String,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTls").field("peer_name", &self.peer_name).finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Loads the CA, this node's certificate (chain) and key from PEM files and builds the
    /// client and server configurations for the link to `peer_name`.
    ///
    /// Fails if a file is missing or holds nothing usable, if the key does not match the
    /// certificate, or if the certificate does not name `own_name`.
    pub fn load(ca: &Path, cert: &Path, key: &Path, own_name: &str, peer_name: &str) -> Result<PeerTls, TlsError> {
        dns_name(own_name)?;
        dns_name(peer_name)?;

        let ca_certs = load_certs(ca, "CA certificate")?;
        let chain = load_certs(cert, "certificate")?;
        let key_der = load_key(key)?;

        let mut roots = RootCertStore::empty();
        for ca_cert in ca_certs {
            roots.add(ca_cert).map_err(|source| TlsError::BadCertificate { what: "CA certificate", path: ca.to_path_buf(), source })?;
        }
        let roots = Arc::new(roots);

        match check_names(&chain[0], own_name) {
            Ok(()) => {}
            Err(NameCheck::Mismatch(presented)) => {
                return Err(TlsError::CertNameMismatch { path: cert.to_path_buf(), expected: own_name.to_owned(), presented });
            }
            Err(NameCheck::Unparsable(source)) => {
                return Err(TlsError::BadCertificate { what: "certificate", path: cert.to_path_buf(), source });
            }
        }

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        let key_error = |source: rustls::Error| match source {
            rustls::Error::InconsistentKeys(_) | rustls::Error::General(_) => {
                TlsError::KeyMismatch { cert: cert.to_path_buf(), key: key.to_path_buf(), source }
            }
            other => TlsError::Config(other),
        };

        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|source| TlsError::Verifier { path: ca.to_path_buf(), source })?;
        let mut server_config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(TlsError::Config)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key_der.clone_key())
            .map_err(key_error)?;
        // No resumption: a resumed session would skip certificate verification, and the link
        // reconnects rarely enough that a full handshake costs nothing.
        server_config.session_storage = Arc::new(NoServerSessionStorage {});
        server_config.send_tls13_tickets = 0;

        let mut client_config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(TlsError::Config)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key_der)
            .map_err(key_error)?;
        client_config.resumption = Resumption::disabled();

        Ok(PeerTls {
            connector: TlsConnector::from(Arc::new(client_config)),
            acceptor: TlsAcceptor::from(Arc::new(server_config)),
            peer_name: peer_name.to_owned(),
        })
    }

    /// The NBD server's TLS for hosts (STARTTLS): our certificate and key
    /// from PEM files, and with `client_ca` a client certificate signed by
    /// it required of every host. TLS 1.2 and 1.3 (hosts' TLS stacks vary).
    pub fn host_acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsAcceptor, TlsError> {
        let chain = load_certs(cert, "certificate")?;
        let key_der = load_key(key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder =
            ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(TlsError::Config)?;
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in load_certs(ca, "client CA certificate")? {
                    roots.add(c).map_err(|source| TlsError::BadCertificate {
                        what: "client CA certificate",
                        path: ca.to_path_buf(),
                        source,
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|source| TlsError::Verifier { path: ca.to_path_buf(), source })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(chain, key_der).map_err(|source| match source {
            rustls::Error::InconsistentKeys(_) | rustls::Error::General(_) => {
                TlsError::KeyMismatch { cert: cert.to_path_buf(), key: key.to_path_buf(), source }
            }
            other => TlsError::Config(other),
        })?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// The node this link talks to.
    pub fn peer_name(&self) -> &str {
        &self.peer_name
    }

    /// Runs the client handshake over `stream`: the server must present a certificate signed by
    /// the CA that names the configured peer.
    ///
    /// In TLS 1.3 this returns before the server has judged our certificate; if the server
    /// refuses it, the first read on the returned stream fails.
    pub async fn connect<S>(&self, stream: S) -> Result<tokio_rustls::client::TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let server_name = dns_name(&self.peer_name)?;
        let handshake = self.connector.connect(server_name, stream);
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| TlsError::HandshakeTimeout { after: HANDSHAKE_TIMEOUT })?
            .map_err(|e| handshake_error(e, &self.peer_name))?;
        // rustls already matched the name; the same exact-name check as `accept` keeps both
        // directions identical.
        self.check_peer(tls.get_ref().1.peer_certificates())?;
        tracing::debug!(peer = %self.peer_name, "peer TLS connected");
        Ok(tls)
    }

    /// Runs the server handshake over `stream`: the client must present a certificate signed by
    /// the CA that names the configured peer.
    pub async fn accept<S>(&self, stream: S) -> Result<tokio_rustls::server::TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.accept_within(stream, HANDSHAKE_TIMEOUT).await
    }

    /// [`accept`](Self::accept) with a given time limit (tests use a short one).
    async fn accept_within<S>(&self, stream: S, limit: Duration) -> Result<tokio_rustls::server::TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = self.acceptor.accept(stream);
        let tls = tokio::time::timeout(limit, handshake)
            .await
            .map_err(|_| TlsError::HandshakeTimeout { after: limit })?
            .map_err(|e| handshake_error(e, &self.peer_name))?;
        self.check_peer(tls.get_ref().1.peer_certificates())?;
        tracing::debug!(peer = %self.peer_name, "peer TLS accepted");
        Ok(tls)
    }

    /// Runs the server handshake for a server that admits several nodes (the
    /// witness): the client must present a certificate signed by the CA that
    /// names one of `names`; returns which.
    pub async fn accept_one_of<S>(&self, stream: S, names: &[String]) -> Result<(tokio_rustls::server::TlsStream<S>, String), TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = self.acceptor.accept(stream);
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| TlsError::HandshakeTimeout { after: HANDSHAKE_TIMEOUT })?
            .map_err(|e| handshake_error(e, &names.join(" or ")))?;
        let end_entity = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or(TlsError::NoPeerCertificate)?.clone();
        let mut presented = Vec::new();
        for name in names {
            match check_names(&end_entity, name) {
                Ok(()) => return Ok((tls, name.clone())),
                Err(NameCheck::Mismatch(p)) => presented = p,
                Err(NameCheck::Unparsable(source)) => return Err(TlsError::PeerCertificateInvalid { source }),
            }
        }
        Err(TlsError::PeerNameMismatch { expected: names.join(" or "), presented })
    }

    /// The peer's certificate chains to our CA (rustls checked); it must also be the
    /// configured peer's.
    fn check_peer(&self, certs: Option<&[CertificateDer<'static>]>) -> Result<(), TlsError> {
        let end_entity = certs.and_then(|c| c.first()).ok_or(TlsError::NoPeerCertificate)?;
        check_names(end_entity, &self.peer_name).map_err(|e| match e {
            NameCheck::Mismatch(presented) => TlsError::PeerNameMismatch { expected: self.peer_name.clone(), presented },
            NameCheck::Unparsable(source) => TlsError::PeerCertificateInvalid { source },
        })
    }
}

fn dns_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    match ServerName::try_from(name.to_owned()) {
        Ok(server_name @ ServerName::DnsName(_)) => Ok(server_name),
        _ => Err(TlsError::InvalidNodeName { name: name.to_owned() }),
    }
}

/// Why a certificate does not name a node.
enum NameCheck {
    /// It parses, and carries these DNS names instead.
    Mismatch(Vec<String>),
    /// It does not parse.
    Unparsable(rustls::Error),
}

/// Checks that the certificate's SANs name `name` (webpki's matching, as for a TLS server name).
/// Our CA issues only exact node names, never wildcards.
fn check_names(cert: &CertificateDer<'_>, name: &str) -> Result<(), NameCheck> {
    let parsed = ParsedCertificate::try_from(cert).map_err(NameCheck::Unparsable)?;
    let server_name = dns_name(name).map_err(|_| NameCheck::Unparsable(rustls::Error::General(format!("`{name}` is not a DNS name"))))?;
    match rustls::client::verify_server_name(&parsed, &server_name) {
        Ok(()) => Ok(()),
        Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { presented, .. })) => {
            Err(NameCheck::Mismatch(dns_names(presented)))
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)) => Err(NameCheck::Mismatch(Vec::new())),
        Err(other) => Err(NameCheck::Unparsable(other)),
    }
}

/// webpki reports a certificate's SANs as `DnsName("site-c")`, `IpAddress(127.0.0.1)`, ...;
/// operators care about the DNS names. Entries of an unknown shape are kept as they are.
fn dns_names(presented: Vec<String>) -> Vec<String> {
    presented
        .into_iter()
        .filter(|p| !p.starts_with("IpAddress("))
        .map(|p| match p.strip_prefix("DnsName(\"").and_then(|s| s.strip_suffix("\")")) {
            Some(name) => name.to_owned(),
            None => p,
        })
        .collect()
}

/// Turns a failed handshake into the reason an operator needs. tokio-rustls wraps rustls errors
/// in `io::Error`.
fn handshake_error(error: io::Error, peer_name: &str) -> TlsError {
    let Some(tls) = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
        return TlsError::Handshake(error);
    };
    match tls {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            TlsError::NotSignedByCa { source: tls.clone() }
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { presented, .. }) => {
            TlsError::PeerNameMismatch { expected: peer_name.to_owned(), presented: dns_names(presented.clone()) }
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => {
            TlsError::PeerNameMismatch { expected: peer_name.to_owned(), presented: Vec::new() }
        }
        rustls::Error::InvalidCertificate(_) => TlsError::PeerCertificateInvalid { source: tls.clone() },
        rustls::Error::NoCertificatesPresented => TlsError::NoPeerCertificate,
        rustls::Error::AlertReceived(alert) => TlsError::PeerRefused { alert: *alert },
        _ => TlsError::Handshake(error),
    }
}

/// Reads a file, telling "missing" from "unreadable".
fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TlsError::FileMissing { what, path: path.to_path_buf() },
        _ => TlsError::FileUnreadable { what, path: path.to_path_buf(), source },
    })
}

/// Every certificate in a PEM file, in order (for our own file: end entity first).
fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(|source| TlsError::MalformedPem {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what, path: path.to_path_buf() });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "private key";
    let bytes = read_file(path, what)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey { path: path.to_path_buf() },
        source => TlsError::MalformedPem { what, path: path.to_path_buf(), source },
    })
}

#[cfg(test)]
mod tests {
    //! Goal: the peer link admits exactly the configured peer with a certificate from our CA,
    //! in both directions, and says why otherwise. Method: certificates from `certs::generate`
    //! in temp dirs; both handshake sides run concurrently over `tokio::io::duplex` or loopback
    //! TCP.

    use super::super::certs;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A CA with certificates for the named nodes, in a temp dir removed on drop.
    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        fn new(nodes: &[&str]) -> Pki {
            let dir = tempfile::tempdir().unwrap();
            let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
            certs::generate(dir.path(), &nodes).unwrap();
            Pki { dir }
        }

        fn path(&self, file: &str) -> PathBuf {
            self.dir.path().join(file)
        }

        /// `PeerTls` for `own` talking to `peer`, using `own`'s certificate from this PKI.
        fn tls(&self, own: &str, peer: &str) -> PeerTls {
            self.tls_with_ca(self, own, peer)
        }

        /// As `tls`, but trusting the CA of `trusted` (which may be another PKI).
        fn tls_with_ca(&self, trusted: &Pki, own: &str, peer: &str) -> PeerTls {
            PeerTls::load(&trusted.path("ca.pem"), &self.path(&format!("{own}.pem")), &self.path(&format!("{own}-key.pem")), own, peer)
                .unwrap()
        }
    }

    type Handshakes = (
        Result<tokio_rustls::client::TlsStream<tokio::io::DuplexStream>, TlsError>,
        Result<tokio_rustls::server::TlsStream<tokio::io::DuplexStream>, TlsError>,
    );

    /// Runs `client.connect` and `server.accept` against each other over an in-memory pipe.
    async fn handshake(client: &PeerTls, server: &PeerTls) -> Handshakes {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        tokio::join!(client.connect(client_io), server.accept(server_io))
    }

    #[tokio::test]
    async fn a_connects_to_b_over_tcp_and_bytes_flow_both_ways() {
        let pki = Pki::new(&["site-a", "site-b", "site-c"]);
        let a = pki.tls("site-a", "site-b");
        let b = pki.tls("site-b", "site-a");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = b.accept(tcp).await.unwrap();
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"hello");
            tls.write_all(b"world").await.unwrap();
            tls.shutdown().await.unwrap();
        });

        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut tls = a.connect(tcp).await.unwrap();
        tls.write_all(b"hello").await.unwrap();
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"world");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn handshake_succeeds_whichever_node_dials() {
        let pki = Pki::new(&["site-a", "site-b"]);
        let a = pki.tls("site-a", "site-b");
        let b = pki.tls("site-b", "site-a");
        for (client, server) in [(&a, &b), (&b, &a)] {
            let (c, s) = handshake(client, server).await;
            let (mut c, mut s) = (c.unwrap(), s.unwrap());
            c.write_all(b"ping").await.unwrap();
            c.flush().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
            s.write_all(b"pong").await.unwrap();
            s.flush().await.unwrap();
            c.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"pong");
        }
    }

    #[tokio::test]
    async fn accept_refuses_a_client_certificate_from_another_ca() {
        let pki = Pki::new(&["site-a", "site-b"]);
        let other = Pki::new(&["site-a"]);
        let b = pki.tls("site-b", "site-a");
        // Trusts our CA (so it accepts B's certificate) but presents one from another CA, even
        // with the right name.
        let impostor = other.tls_with_ca(&pki, "site-a", "site-b");
        let (_, s) = handshake(&impostor, &b).await;
        let err = s.unwrap_err();
        assert!(matches!(err, TlsError::NotSignedByCa { .. }), "{err:?}");
        assert!(err.to_string().starts_with("peer certificate is not signed by the configured CA"), "{err}");
    }

    #[tokio::test]
    async fn connect_refuses_a_server_certificate_from_another_ca() {
        let pki = Pki::new(&["site-a", "site-b"]);
        let other = Pki::new(&["site-b"]);
        let a = pki.tls("site-a", "site-b");
        let impostor = other.tls("site-b", "site-a");
        let (c, s) = handshake(&a, &impostor).await;
        let err = c.unwrap_err();
        assert!(matches!(err, TlsError::NotSignedByCa { .. }), "{err:?}");
        // The impostor learns it was refused.
        let err = s.unwrap_err();
        assert!(matches!(err, TlsError::PeerRefused { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn accept_refuses_a_valid_certificate_for_another_node() {
        let pki = Pki::new(&["site-a", "site-b", "site-c"]);
        let b = pki.tls("site-b", "site-a");
        let c = pki.tls("site-c", "site-b");
        let (client, server) = handshake(&c, &b).await;
        let err = server.unwrap_err();
        match &err {
            TlsError::PeerNameMismatch { expected, presented } => {
                assert_eq!(expected, "site-a");
                assert_eq!(presented, &["site-c".to_owned()]);
            }
            other => panic!("expected PeerNameMismatch, got {other:?}"),
        }
        assert_eq!(err.to_string(), "peer presented a certificate for `site-c`, expected `site-a`");
        // TLS 1.3: the client finished first, then sees the connection closed.
        let mut client = client.unwrap();
        let mut buf = [0u8; 1];
        let read = client.read(&mut buf).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    #[tokio::test]
    async fn connect_refuses_a_server_presenting_another_nodes_certificate() {
        let pki = Pki::new(&["site-a", "site-b", "site-c"]);
        let a = pki.tls("site-a", "site-b");
        let c = pki.tls("site-c", "site-a");
        let (client, server) = handshake(&a, &c).await;
        let err = client.unwrap_err();
        match &err {
            TlsError::PeerNameMismatch { expected, presented } => {
                assert_eq!(expected, "site-b");
                assert_eq!(presented, &["site-c".to_owned()]);
            }
            other => panic!("expected PeerNameMismatch, got {other:?}"),
        }
        assert_eq!(err.to_string(), "peer presented a certificate for `site-c`, expected `site-b`");
        assert!(server.is_err());
    }

    #[test]
    fn load_refuses_a_certificate_for_another_node() {
        let pki = Pki::new(&["site-a", "site-b"]);
        let err = PeerTls::load(&pki.path("ca.pem"), &pki.path("site-b.pem"), &pki.path("site-b-key.pem"), "site-a", "site-b").unwrap_err();
        match &err {
            TlsError::CertNameMismatch { path, expected, presented } => {
                assert_eq!(path, &pki.path("site-b.pem"));
                assert_eq!(expected, "site-a");
                assert_eq!(presented, &["site-b".to_owned()]);
            }
            other => panic!("expected CertNameMismatch, got {other:?}"),
        }
        assert!(err.to_string().contains("site-b.pem"), "{err}");
    }

    #[test]
    fn load_names_a_missing_file() {
        let pki = Pki::new(&["site-a"]);
        let missing = pki.path("nope.pem");
        let err = PeerTls::load(&missing, &pki.path("site-a.pem"), &pki.path("site-a-key.pem"), "site-a", "site-b").unwrap_err();
        assert!(matches!(&err, TlsError::FileMissing { what: "CA certificate", path } if *path == missing), "{err:?}");
        assert_eq!(err.to_string(), format!("CA certificate file {} does not exist", missing.display()));
    }

    #[test]
    fn load_explains_garbage_and_swapped_pem_files() {
        let pki = Pki::new(&["site-a"]);
        let garbage = pki.path("garbage.pem");
        std::fs::write(&garbage, "this is not PEM\n").unwrap();
        let load = |ca: &Path, cert: &Path, key: &Path| PeerTls::load(ca, cert, key, "site-a", "site-b").unwrap_err();
        let (ca, cert, key) = (pki.path("ca.pem"), pki.path("site-a.pem"), pki.path("site-a-key.pem"));

        let err = load(&ca, &garbage, &key);
        assert!(matches!(&err, TlsError::NoCertificate { what: "certificate", path } if *path == garbage), "{err:?}");
        assert!(err.to_string().contains("garbage.pem"), "{err}");

        let err = load(&ca, &cert, &garbage);
        assert!(matches!(&err, TlsError::NoPrivateKey { path } if *path == garbage), "{err:?}");
        assert!(err.to_string().contains("contains no private key"), "{err}");

        // Key file given as certificate: it has no certificate in it.
        let err = load(&ca, &key, &key);
        assert!(matches!(&err, TlsError::NoCertificate { .. }), "{err:?}");

        // A certificate block whose body is not base64.
        let broken = pki.path("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n").unwrap();
        let err = load(&broken, &cert, &key);
        assert!(matches!(&err, TlsError::MalformedPem { what: "CA certificate", .. }), "{err:?}");
    }

    #[test]
    fn load_refuses_a_key_that_does_not_match_the_certificate() {
        let pki = Pki::new(&["site-a", "site-b"]);
        let err = PeerTls::load(&pki.path("ca.pem"), &pki.path("site-a.pem"), &pki.path("site-b-key.pem"), "site-a", "site-b").unwrap_err();
        assert!(matches!(&err, TlsError::KeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn load_refuses_names_that_are_not_dns_names() {
        let pki = Pki::new(&["site-a"]);
        for (own, peer) in [("site a", "site-b"), ("site-a", ""), ("site-a", "127.0.0.1")] {
            let err = PeerTls::load(&pki.path("ca.pem"), &pki.path("site-a.pem"), &pki.path("site-a-key.pem"), own, peer).unwrap_err();
            assert!(matches!(&err, TlsError::InvalidNodeName { .. }), "{err:?}");
        }
    }

    #[tokio::test]
    async fn handshake_with_a_silent_peer_times_out() {
        let pki = Pki::new(&["site-a", "site-b"]);
        let b = pki.tls("site-b", "site-a");
        let (_silent, server_io) = tokio::io::duplex(1024);
        let limit = Duration::from_millis(50);
        let err = b.accept_within(server_io, limit).await.unwrap_err();
        assert!(matches!(err, TlsError::HandshakeTimeout { .. }), "{err:?}");
    }
}
