//! Mutual TLS: the node's identity, the server's rustls configuration (client certificates
//! required and verified against the configured CA and the peers' own CAs), the client
//! configuration (server certificate verified against the peer's CA and its configured name),
//! and checks of an already-verified certificate: its names, and which CA it chains to — a
//! peer that keeps its own PKI must present a certificate of that PKI, and operators and
//! scoring clients one of this node's CA.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::crypto::ring::sign::any_supported_type;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::sign::SigningKey;
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use webpki::KeyUsage;

use crate::error::NodeError;

/// A party's certificate chain, private key and trusted CA certificates.
pub struct Identity {
    cert_pem: String,
    key_pem: String,
    ca_pem: String,
    certs: Vec<CertificateDer<'static>>,
    ca: Vec<CertificateDer<'static>>,
    /// Peers that keep their own PKI: their CA (PEM and certificates) by party.
    peer_cas: BTreeMap<String, (String, Vec<CertificateDer<'static>>)>,
    /// Revoked certificates, by the revocation lists of the CAs that issued them.
    revocations: Arc<Revocations>,
    /// The private key, for signatures outside TLS (audit heads given to peers).
    signing: Arc<dyn SigningKey>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("certs", &self.certs.len())
            .field("ca", &self.ca.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads PEM files: the certificate chain, its private key and the CA bundle.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Identity, NodeError> {
        let read = |path: &Path| std::fs::read_to_string(path).map_err(|e| NodeError::io(path, e));
        let (cert_pem, key_pem, ca_pem) = (read(cert)?, read(key)?, read(ca)?);
        if let Some(mode) = readable_by_others(key)? {
            return Err(NodeError::Tls(format!(
                "{}: the private key can be read by other users (mode {mode:o}); chmod 600 it",
                key.display(),
            )));
        }
        let certs = parse_certs(cert, &cert_pem)?;
        let ca_certs = parse_certs(ca, &ca_pem)?;
        let unusable =
            |e: String| NodeError::Tls(format!("{}: no usable private key: {e}", key.display()));
        let private = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| unusable(e.to_string()))?;
        let signing = any_supported_type(&private).map_err(|e| unusable(e.to_string()))?;
        Ok(Identity {
            cert_pem,
            key_pem,
            ca_pem,
            certs,
            ca: ca_certs,
            peer_cas: BTreeMap::new(),
            revocations: Arc::new(Revocations::none()),
            signing,
        })
    }

    /// Loads `ca.crt`, `node.crt` and `node.key` from a directory written by `unseen cert`.
    pub fn load_dir(dir: &Path) -> Result<Identity, NodeError> {
        Identity::load(
            &dir.join("node.crt"),
            &dir.join("node.key"),
            &dir.join("ca.crt"),
        )
    }

    /// Whether this identity's own certificate is valid for `name`.
    pub fn is_for(&self, name: &str) -> bool {
        self.certs.first().is_some_and(|c| cert_is_for(c, name))
    }

    /// Refuses this identity's own certificate unless it chains to the configured CA and is
    /// valid at `now` as a server and as a client (a node is both): says which of these
    /// fails, in the operator's terms.
    pub fn check_own(&self, now: UnixTime) -> Result<(), String> {
        let leaf = self.certs.first().ok_or("no certificate")?;
        let end_entity = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
        let anchors = self
            .ca
            .iter()
            .map(|ca| webpki::anchor_from_trusted_cert(ca).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the CA certificate cannot be used: {e}"))?;
        let date = |t: UnixTime| {
            time::OffsetDateTime::from_unix_timestamp(t.as_secs() as i64)
                .map_or_else(|_| format!("{} s", t.as_secs()), |d| d.date().to_string())
        };
        let revoked = self.revocations.current();
        let lists = revoked.lists.iter().collect::<Vec<_>>();
        for usage in [KeyUsage::server_auth(), KeyUsage::client_auth()] {
            end_entity
                .verify_for_usage(
                    webpki::ALL_VERIFICATION_ALGS,
                    &anchors,
                    &self.certs[1..],
                    now,
                    usage,
                    revocation_options(&lists),
                    None,
                )
                .map_err(|e| match e {
                    webpki::Error::CertExpired { not_after, .. } => {
                        format!("the certificate expired on {}", date(not_after))
                    }
                    webpki::Error::CertNotValidYet { not_before, .. } => {
                        format!("the certificate is not valid before {}", date(not_before))
                    }
                    webpki::Error::UnknownIssuer => {
                        "the certificate is not signed by the CA of the configured ca file".into()
                    }
                    webpki::Error::CertRevoked => {
                        "the certificate is revoked (it is on a configured revocation list)".into()
                    }
                    other => format!("the certificate does not verify: {other:?}"),
                })?;
        }
        Ok(())
    }

    /// Trusts `peer` only with certificates of the CA in `ca` (its own PKI), instead of this
    /// node's CA.
    pub fn pin_peer_ca(&mut self, peer: &str, ca: &Path) -> Result<(), NodeError> {
        let pem = std::fs::read_to_string(ca).map_err(|e| NodeError::io(ca, e))?;
        let certs = parse_certs(ca, &pem)?;
        self.peer_cas.insert(peer.to_owned(), (pem, certs));
        Ok(())
    }

    /// Signs `message` with this identity's private key: the signature scheme (its TLS code
    /// point) and the signature, which [`verify_signature`] checks with the certificate.
    pub fn sign(&self, message: &[u8]) -> Result<(u16, Vec<u8>), NodeError> {
        let signer = self
            .signing
            .choose_scheme(SIGNATURE_SCHEMES)
            .ok_or_else(|| {
                NodeError::Tls("the private key signs with no supported scheme".into())
            })?;
        let signature = signer
            .sign(message)
            .map_err(|e| NodeError::Tls(format!("signing: {e}")))?;
        Ok((u16::from(signer.scheme()), signature))
    }

    /// This identity's own certificate.
    pub fn certificate(&self) -> Option<&CertificateDer<'static>> {
        self.certs.first()
    }

    /// Checks certificates against the revocation lists in `files` from now on, reading them
    /// again whenever one changes (a list that cannot be read now is refused by name).
    pub fn check_revocations(&mut self, files: &[PathBuf]) -> Result<(), NodeError> {
        self.revocations = Arc::new(Revocations::load(files)?);
        Ok(())
    }

    /// The revocation lists in force.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// Whether the leaf of `certs` (a verified client chain) chains to the CA that vouches for
    /// `peer` — its own pinned CA, or this node's — or, for `None` (operators, scoring
    /// clients), to this node's CA, and is on no revocation list in force now (a list
    /// changed since the connection's handshake counts).
    pub fn vouches_for(
        &self,
        certs: Option<&[CertificateDer<'_>]>,
        peer: Option<&str>,
    ) -> Result<(), Distrust> {
        let (leaf, chain) = certs
            .and_then(<[_]>::split_first)
            .ok_or(Distrust::NotVouched)?;
        let cas = peer
            .and_then(|p| self.peer_cas.get(p))
            .map_or(&self.ca, |(_, certs)| certs);
        let anchors = cas
            .iter()
            .map(|ca| webpki::anchor_from_trusted_cert(ca).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Distrust::NotVouched)?;
        let end_entity = webpki::EndEntityCert::try_from(leaf).map_err(|_| Distrust::NotVouched)?;
        let revoked = self.revocations.current();
        let lists = revoked.lists.iter().collect::<Vec<_>>();
        match end_entity.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            chain,
            UnixTime::now(),
            KeyUsage::client_auth(),
            revocation_options(&lists),
            None,
        ) {
            Ok(_) => Ok(()),
            Err(webpki::Error::CertRevoked) => Err(Distrust::Revoked),
            Err(_) => Err(Distrust::NotVouched),
        }
    }

    fn roots<'c>(
        cas: impl IntoIterator<Item = &'c CertificateDer<'static>>,
    ) -> Result<Arc<RootCertStore>, NodeError> {
        let mut roots = RootCertStore::empty();
        for cert in cas {
            roots
                .add(cert.clone())
                .map_err(|e| NodeError::Tls(format!("CA certificate refused: {e}")))?;
        }
        Ok(Arc::new(roots))
    }

    /// Server side: TLS 1.2/1.3 with ring, HTTP/2 only, a client certificate from the CA
    /// (or a peer's own CA) required on every connection and checked against the revocation
    /// lists in force at its handshake.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, NodeError> {
        let provider = Arc::new(default_provider());
        let pinned = self.peer_cas.values().flat_map(|(_, certs)| certs);
        let verifier = Arc::new(RevokingClientVerifier::new(
            Identity::roots(self.ca.iter().chain(pinned))?,
            provider.clone(),
            self.revocations.clone(),
        )?);
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| NodeError::Tls(format!("private key: {e}")))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| NodeError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs.clone(), key)
            .map_err(|e| NodeError::Tls(format!("own certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// Client side: present this identity, trust only the CA, and require the server's
    /// certificate to be valid for `server_name`.
    pub fn client_config(&self, server_name: &str) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .domain_name(server_name)
            .assume_http2(true)
    }

    /// Towards `peer`: present this identity, trust only the peer's own CA if it keeps its
    /// own PKI, else this node's, and refuse a server certificate on a revocation list in
    /// force at the handshake.
    pub fn peer_client_config(&self, peer: &str) -> Result<Arc<ClientConfig>, NodeError> {
        let cas = self.peer_cas.get(peer).map_or(&self.ca, |(_, certs)| certs);
        let provider = Arc::new(default_provider());
        let verifier = Arc::new(RevokingServerVerifier::new(
            Identity::roots(cas)?,
            provider.clone(),
            self.revocations.clone(),
        )?);
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| NodeError::Tls(format!("private key: {e}")))?;
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| NodeError::Tls(e.to_string()))?
            // Not a disabled check: the verifier is rustls' WebPKI verifier, built with the
            // revocation lists in force at each handshake.
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.certs.clone(), key)
            .map_err(|e| NodeError::Tls(format!("own certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        // Every connection verifies the peer's certificate anew: a resumed session would skip
        // the verifier, and with it a revocation list published since.
        config.resumption = tokio_rustls::rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

/// The schemes [`Identity::sign`] may use, with the algorithm that verifies each.
const SIGNATURE_SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
];

/// Whether `signature` (of `scheme`, by [`Identity::sign`]) of `message` verifies with the
/// public key of `certificate`.
pub fn verify_signature(
    certificate: &CertificateDer<'_>,
    scheme: u16,
    message: &[u8],
    signature: &[u8],
) -> bool {
    let algorithm: &dyn tokio_rustls::rustls::pki_types::SignatureVerificationAlgorithm =
        match SignatureScheme::from(scheme) {
            SignatureScheme::ED25519 => webpki::ring::ED25519,
            SignatureScheme::ECDSA_NISTP256_SHA256 => webpki::ring::ECDSA_P256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384 => webpki::ring::ECDSA_P384_SHA384,
            SignatureScheme::RSA_PSS_SHA256 => webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
            _ => return false,
        };
    webpki::EndEntityCert::try_from(certificate)
        .and_then(|cert| cert.verify_signature(algorithm, message, signature))
        .is_ok()
}

/// Why [`Identity::vouches_for`] does not vouch for a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distrust {
    /// A revocation list of its CA names it.
    Revoked,
    /// It does not chain to the CA that would vouch for it (or is expired, or unusable).
    NotVouched,
}

/// Certificate revocation lists (DER or PEM files, one CA's list each), read again when a
/// file changes — looked for at most once a second — so a CA's new list takes effect without
/// a restart. A list that cannot be read at start-up stops the node; one that cannot be read
/// later leaves the lists read before in force, and says why in the log.
///
/// A certificate is refused when a list of its issuer names it; a certificate whose issuer
/// has no list here is accepted (lists are optional per CA). A list past its next update still
/// counts: it can only refuse more, never accept what a newer list would refuse.
pub struct Revocations {
    files: Vec<PathBuf>,
    state: Mutex<Loaded>,
}

/// What the revocation lists held when last read.
struct Loaded {
    checked: Instant,
    stamps: Vec<Option<(SystemTime, u64)>>,
    lists: Arc<Lists>,
}

/// One reading of the revocation lists.
#[derive(Debug)]
pub(crate) struct Lists {
    der: Vec<CertificateRevocationListDer<'static>>,
    lists: Vec<webpki::CertRevocationList<'static>>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Revocations {
    /// No revocation lists.
    fn none() -> Revocations {
        Revocations {
            files: Vec::new(),
            state: Mutex::new(Loaded {
                checked: Instant::now(),
                stamps: Vec::new(),
                lists: Arc::new(Lists {
                    der: Vec::new(),
                    lists: Vec::new(),
                }),
            }),
        }
    }

    /// Reads the lists in `files`, refusing one that cannot be read, by name.
    fn load(files: &[PathBuf]) -> Result<Revocations, NodeError> {
        let stamps = files.iter().map(|f| stamp(f)).collect();
        let lists = read_lists(files)?;
        Ok(Revocations {
            files: files.to_vec(),
            state: Mutex::new(Loaded {
                checked: Instant::now(),
                stamps,
                lists: Arc::new(lists),
            }),
        })
    }

    /// The lists in force: read again first if a file changed since they were read.
    pub(crate) fn current(&self) -> Arc<Lists> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.files.is_empty() || state.checked.elapsed() < Duration::from_secs(1) {
            return state.lists.clone();
        }
        state.checked = Instant::now();
        let stamps = self.files.iter().map(|f| stamp(f)).collect::<Vec<_>>();
        if stamps != state.stamps {
            state.stamps = stamps;
            match read_lists(&self.files) {
                Ok(lists) => {
                    tracing::info!(lists = lists.lists.len(), "revocation lists read again");
                    state.lists = Arc::new(lists);
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "revocation lists not read again; the lists read before stay in force"
                ),
            }
        }
        state.lists.clone()
    }
}

/// A file's modification time and length, `None` when it cannot be looked at.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn read_lists(files: &[PathBuf]) -> Result<Lists, NodeError> {
    let mut read = Lists {
        der: Vec::new(),
        lists: Vec::new(),
    };
    for path in files {
        let bytes = std::fs::read(path).map_err(|e| NodeError::io(path, e))?;
        let refused =
            |e: String| NodeError::Tls(format!("{}: not a revocation list: {e}", path.display()));
        let ders = if bytes.starts_with(b"-----BEGIN") {
            CertificateRevocationListDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| refused(e.to_string()))?
        } else {
            vec![CertificateRevocationListDer::from(bytes)]
        };
        if ders.is_empty() {
            return Err(refused("no PEM X509 CRL in the file".into()));
        }
        for der in ders {
            let list = webpki::OwnedCertRevocationList::from_der(&der)
                .map_err(|e| refused(format!("{e:?}")))?;
            read.lists.push(list.into());
            read.der.push(der);
        }
    }
    Ok(read)
}

/// Revocation checking with `lists`: every certificate of a chain but its trust anchor, a
/// certificate whose issuer has no list accepted, a list past its next update still used.
fn revocation_options<'a>(
    lists: &'a [&'a webpki::CertRevocationList<'a>],
) -> Option<webpki::RevocationOptions<'a>> {
    let builder = webpki::RevocationOptionsBuilder::new(lists).ok()?;
    Some(
        builder
            .with_status_policy(webpki::UnknownStatusPolicy::Allow)
            .with_expiration_policy(webpki::ExpirationPolicy::Ignore)
            .build(),
    )
}

/// The last verifier built, and the revocation lists it was built with.
type Built<V> = Mutex<Option<(Arc<Lists>, Arc<V>)>>;

/// The verifier built with `lists`: the one built last if it was built with them, else a new
/// one from `build` (revocation lists are parsed once per change, not once per handshake).
fn built_with<V: ?Sized>(
    built: &Built<V>,
    lists: Arc<Lists>,
    build: impl FnOnce(&Lists) -> TlsResult<Arc<V>>,
) -> TlsResult<Arc<V>> {
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((with, verifier)) = built.as_ref() {
        if Arc::ptr_eq(with, &lists) {
            return Ok(verifier.clone());
        }
    }
    let verifier = build(&lists)?;
    *built = Some((lists, verifier.clone()));
    Ok(verifier)
}

/// The server's check of client certificates: rustls' WebPKI verifier, built with the
/// revocation lists in force at the handshake.
#[derive(Debug)]
struct RevokingClientVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    revocations: Arc<Revocations>,
    subjects: Vec<DistinguishedName>,
    /// Checks signatures (which no revocation list changes).
    signatures: Arc<dyn ClientCertVerifier>,
    built: Built<dyn ClientCertVerifier>,
}

impl RevokingClientVerifier {
    fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
        revocations: Arc<Revocations>,
    ) -> Result<RevokingClientVerifier, NodeError> {
        let signatures =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| NodeError::Tls(format!("client verifier: {e}")))?;
        Ok(RevokingClientVerifier {
            subjects: roots.subjects(),
            roots,
            provider,
            revocations,
            signatures,
            built: Mutex::new(None),
        })
    }
}

type TlsResult<T> = Result<T, tokio_rustls::rustls::Error>;

impl ClientCertVerifier for RevokingClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> TlsResult<ClientCertVerified> {
        built_with(&self.built, self.revocations.current(), |lists| {
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .with_crls(lists.der.iter().cloned())
                .allow_unknown_revocation_status()
                .build()
                .map_err(|e| tokio_rustls::rustls::Error::General(format!("client verifier: {e}")))
        })?
        .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> TlsResult<HandshakeSignatureValid> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> TlsResult<HandshakeSignatureValid> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

/// A client's check of a peer's server certificate: rustls' WebPKI verifier, built with the
/// revocation lists in force at the handshake.
#[derive(Debug)]
struct RevokingServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    revocations: Arc<Revocations>,
    /// Checks signatures (which no revocation list changes).
    signatures: Arc<WebPkiServerVerifier>,
    built: Built<WebPkiServerVerifier>,
}

impl RevokingServerVerifier {
    fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
        revocations: Arc<Revocations>,
    ) -> Result<RevokingServerVerifier, NodeError> {
        let signatures =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| NodeError::Tls(format!("server verifier: {e}")))?;
        Ok(RevokingServerVerifier {
            roots,
            provider,
            revocations,
            signatures,
            built: Mutex::new(None),
        })
    }
}

impl ServerCertVerifier for RevokingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> TlsResult<ServerCertVerified> {
        built_with(&self.built, self.revocations.current(), |lists| {
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .with_crls(lists.der.iter().cloned())
                .allow_unknown_revocation_status()
                .build()
                .map_err(|e| tokio_rustls::rustls::Error::General(format!("server verifier: {e}")))
        })?
        .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> TlsResult<HandshakeSignatureValid> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> TlsResult<HandshakeSignatureValid> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

/// The permission bits of `path` when users other than its owner may access it (on Unix; a
/// key file must be its owner's alone).
pub(crate) fn readable_by_others(path: &Path) -> Result<Option<u32>, NodeError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| NodeError::io(path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Ok(Some(mode & 0o777));
        }
    }
    Ok(None)
}

/// TLS towards a database server: trust only the CA in the PEM file `ca`, and require the
/// server's certificate to be valid for the host connected to; no client certificate.
pub(crate) fn database_client_config(ca: &Path) -> Result<Arc<ClientConfig>, NodeError> {
    let pem = std::fs::read_to_string(ca).map_err(|e| NodeError::io(ca, e))?;
    let roots = Identity::roots(&parse_certs(ca, &pem)?)?;
    let config = ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| NodeError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn parse_certs(path: &Path, pem: &str) -> Result<Vec<CertificateDer<'static>>, NodeError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NodeError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(NodeError::Tls(format!(
            "{}: no PEM certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// Whether a certificate (whose chain the TLS handshake has verified) is valid for `name`
/// (a DNS name in its subject alternative names).
pub fn cert_is_for(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    let Ok(end_entity) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    end_entity
        .verify_is_valid_for_subject_name(&server_name)
        .is_ok()
}

/// The DNS names of a (verified) leaf certificate, at most 8 of 64 characters, for the audit
/// log of a refused call.
pub fn cert_names(certs: Option<&[CertificateDer<'_>]>) -> Vec<String> {
    let Some(end_entity) = certs
        .and_then(<[_]>::first)
        .and_then(|leaf| webpki::EndEntityCert::try_from(leaf).ok())
    else {
        return Vec::new();
    };
    end_entity
        .valid_dns_names()
        .take(8)
        .map(|name| name.chars().take(64).collect())
        .collect()
}

/// Of `candidates`, the first name the peer's leaf certificate is valid for.
pub fn peer_name<'a>(
    certs: Option<&[CertificateDer<'_>]>,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let leaf = certs?.first()?;
    candidates.into_iter().find(|name| cert_is_for(leaf, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's own certificate is refused, in the operator's words, when it has expired, is
    /// not yet valid, or was not signed by the configured CA.
    #[test]
    fn own_certificate_is_checked_against_the_ca_and_the_clock() {
        let dir = std::env::temp_dir().join(format!("unseen-tls-{}", std::process::id()));
        let (a, b) = (dir.join("a"), dir.join("b"));
        for ca in [&a, &b] {
            std::fs::create_dir_all(ca).unwrap();
            crate::certs::init(ca, &["tax".to_string()]).unwrap();
        }
        let own = Identity::load_dir(&a.join("tax")).unwrap();
        let now = UnixTime::now();
        own.check_own(now).unwrap();
        let years = |n: u64| std::time::Duration::from_secs(n * 365 * 86_400);
        let later =
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.as_secs()) + years(3));
        let err = own.check_own(later).unwrap_err();
        assert!(err.starts_with("the certificate expired on 20"), "{err}");
        let earlier =
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.as_secs()) - years(1));
        let err = own.check_own(earlier).unwrap_err();
        assert!(
            err.starts_with("the certificate is not valid before 20"),
            "{err}"
        );
        let other_ca = Identity::load(
            &a.join("tax/node.crt"),
            &a.join("tax/node.key"),
            &b.join("ca.crt"),
        )
        .unwrap();
        let err = other_ca.check_own(now).unwrap_err();
        assert!(err.contains("not signed by the CA"), "{err}");
        // A private key others can read is refused at load.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key = a.join("tax/node.key");
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = Identity::load_dir(&a.join("tax")).unwrap_err().to_string();
            assert!(
                err.contains("can be read by other users (mode 644)"),
                "{err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `unseen cert revoke` lists a certificate; a node that checks that list refuses it from
    /// the next look at the file on (no restart), keeps the lists it had when the file turns
    /// unreadable, and refuses to start with a revoked certificate of its own.
    #[test]
    fn revocation_lists_are_read_again_when_they_change() {
        let dir = std::env::temp_dir().join(format!("unseen-crl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let names = ["tax", "bank", "operator"].map(String::from);
        crate::certs::init(&dir, &names).unwrap();
        // An empty list to start from.
        let crl = crate::certs::revoke(&dir, &[]).unwrap();
        let mut tax = Identity::load_dir(&dir.join("tax")).unwrap();
        tax.check_revocations(std::slice::from_ref(&crl)).unwrap();
        let chain = |name: &str| {
            parse_certs(
                Path::new(name),
                &std::fs::read_to_string(dir.join(name).join("node.crt")).unwrap(),
            )
            .unwrap()
        };
        let (bank, operator) = (chain("bank"), chain("operator"));
        assert_eq!(tax.vouches_for(Some(&operator), None), Ok(()));
        assert_eq!(tax.vouches_for(Some(&bank), Some("bank")), Ok(()));

        crate::certs::revoke(&dir, &["operator".to_string()]).unwrap();
        assert!(!dir.join("operator").exists(), "the name is free again");
        // Looked at again at most once a second.
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(
            tax.vouches_for(Some(&operator), None),
            Err(Distrust::Revoked)
        );
        assert_eq!(tax.vouches_for(Some(&bank), Some("bank")), Ok(()));
        tax.check_own(UnixTime::now()).unwrap();

        // A new certificate for the name is not revoked; the list keeps the old entry.
        crate::certs::issue(&dir, &["operator".to_string()]).unwrap();
        crate::certs::revoke(&dir, &["bank".to_string()]).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(tax.vouches_for(Some(&chain("operator")), None), Ok(()));
        assert_eq!(
            tax.vouches_for(Some(&operator), None),
            Err(Distrust::Revoked)
        );
        assert_eq!(
            tax.vouches_for(Some(&bank), Some("bank")),
            Err(Distrust::Revoked)
        );

        // A list that cannot be read leaves the lists read before in force.
        std::fs::write(&crl, "not a list").unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(
            tax.vouches_for(Some(&bank), Some("bank")),
            Err(Distrust::Revoked)
        );
        let err = Identity::load_dir(&dir.join("tax"))
            .unwrap()
            .check_revocations(std::slice::from_ref(&crl))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ca.crl: not a revocation list"), "{err}");

        // A node whose own certificate is revoked does not start.
        crate::certs::revoke(&dir, &[]).unwrap_err();
        std::fs::remove_file(&crl).unwrap();
        crate::certs::revoke(&dir, &["tax".to_string()]).unwrap();
        let revoked = std::fs::read_dir(dir.join("revoked"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("tax-"))
            .unwrap();
        let mut own = Identity::load_dir(&revoked).unwrap();
        own.check_revocations(std::slice::from_ref(&crl)).unwrap();
        let err = own.check_own(UnixTime::now()).unwrap_err();
        assert!(err.contains("the certificate is revoked"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
