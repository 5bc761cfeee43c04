//! Mutual TLS: the node's identity, the server's rustls configuration (client certificates
//! required and verified against the configured CA), the client configuration (server
//! certificate verified against the CA and the peer's configured name), and name checks of an
//! already-verified peer certificate.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

use crate::error::NodeError;

/// A party's certificate chain, private key and trusted CA certificates.
pub struct Identity {
    cert_pem: String,
    key_pem: String,
    ca_pem: String,
    certs: Vec<CertificateDer<'static>>,
    ca: Vec<CertificateDer<'static>>,
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
        let certs = parse_certs(cert, &cert_pem)?;
        let ca_certs = parse_certs(ca, &ca_pem)?;
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            NodeError::Tls(format!("{}: no usable private key: {e}", key.display()))
        })?;
        Ok(Identity {
            cert_pem,
            key_pem,
            ca_pem,
            certs,
            ca: ca_certs,
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

    fn roots(&self) -> Result<Arc<RootCertStore>, NodeError> {
        let mut roots = RootCertStore::empty();
        for cert in &self.ca {
            roots
                .add(cert.clone())
                .map_err(|e| NodeError::Tls(format!("CA certificate refused: {e}")))?;
        }
        Ok(Arc::new(roots))
    }

    /// Server side: TLS 1.2/1.3 with ring, HTTP/2 only, a client certificate from the CA
    /// required on every connection.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, NodeError> {
        let provider = Arc::new(default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(|e| NodeError::Tls(format!("client verifier: {e}")))?;
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

/// Of `candidates`, the first name the peer's leaf certificate is valid for.
pub fn peer_name<'a>(
    certs: Option<&[CertificateDer<'_>]>,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let leaf = certs?.first()?;
    candidates.into_iter().find(|name| cert_is_for(leaf, name))
}
