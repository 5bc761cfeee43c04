//! Mutual TLS: the node's identity, the server's rustls configuration (client certificates
//! required and verified against the configured CA and the peers' own CAs), the client
//! configuration (server certificate verified against the peer's CA and its configured name),
//! and checks of an already-verified certificate: its names, and which CA it chains to — a
//! peer that keeps its own PKI must present a certificate of that PKI, and operators and
//! scoring clients one of this node's CA.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
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
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            NodeError::Tls(format!("{}: no usable private key: {e}", key.display()))
        })?;
        Ok(Identity {
            cert_pem,
            key_pem,
            ca_pem,
            certs,
            ca: ca_certs,
            peer_cas: BTreeMap::new(),
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
        for usage in [KeyUsage::server_auth(), KeyUsage::client_auth()] {
            end_entity
                .verify_for_usage(
                    webpki::ALL_VERIFICATION_ALGS,
                    &anchors,
                    &self.certs[1..],
                    now,
                    usage,
                    None,
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

    /// Whether the leaf of `certs` (a verified client chain) chains to the CA that vouches for
    /// `peer` — its own pinned CA, or this node's — or, for `None` (operators, scoring
    /// clients), to this node's CA.
    pub fn vouches_for(&self, certs: Option<&[CertificateDer<'_>]>, peer: Option<&str>) -> bool {
        let Some((leaf, chain)) = certs.and_then(<[_]>::split_first) else {
            return false;
        };
        let cas = peer
            .and_then(|p| self.peer_cas.get(p))
            .map_or(&self.ca, |(_, certs)| certs);
        let Ok(anchors) = cas
            .iter()
            .map(|ca| webpki::anchor_from_trusted_cert(ca).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
        else {
            return false;
        };
        let Ok(end_entity) = webpki::EndEntityCert::try_from(leaf) else {
            return false;
        };
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                chain,
                UnixTime::now(),
                KeyUsage::client_auth(),
                None,
                None,
            )
            .is_ok()
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, NodeError> {
        let mut roots = RootCertStore::empty();
        let pinned = self.peer_cas.values().flat_map(|(_, certs)| certs);
        for cert in self.ca.iter().chain(pinned) {
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
        self.peer_client_config("", server_name)
    }

    /// [`Identity::client_config`] towards `peer`: trust only its own CA if it keeps its own
    /// PKI, else this node's.
    pub fn peer_client_config(
        &self,
        peer: &str,
        server_name: &str,
    ) -> tonic::transport::ClientTlsConfig {
        let ca_pem = self.peer_cas.get(peer).map_or(&self.ca_pem, |(pem, _)| pem);
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .domain_name(server_name)
            .assume_http2(true)
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
}
