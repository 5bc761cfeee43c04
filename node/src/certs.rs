//! `unseen cert`: a CA and node/operator certificates for a federation, so nobody needs
//! openssl. Layout: `<dir>/ca.crt`, `<dir>/ca.key` (keep offline), and per name
//! `<dir>/<name>/{ca.crt,node.crt,node.key}` — the directory a node's `[tls]` or the CLI's
//! `--identity` points at. Keys are ECDSA P-256, certificates valid for two years with the
//! name as DNS subject alternative name, usable as TLS server and client. Revoked
//! certificates are listed in `<dir>/ca.crl`, the CA's signed revocation list.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, CertificateRevocationListDer};

use crate::config::check_name;
use crate::error::NodeError;

fn tls_error(what: &str) -> impl Fn(rcgen::Error) -> NodeError + '_ {
    move |e| NodeError::Tls(format!("{what}: {e}"))
}

/// Writes a new file (never replacing one); a secret is created readable by its owner only.
fn write(path: &Path, text: &str, secret: bool) -> Result<(), NodeError> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| NodeError::io(parent, e))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(|e| NodeError::io(path, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| NodeError::io(path, e))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
}

/// Creates a new CA in `dir` (refusing to overwrite one) and a certificate for each name.
pub fn init(dir: &Path, names: &[String]) -> Result<(), NodeError> {
    let ca_key_path = dir.join("ca.key");
    if ca_key_path.exists() {
        return Err(NodeError::Tls(format!(
            "{} exists; use `unseen cert issue` to add names to this CA",
            ca_key_path.display()
        )));
    }
    let key = KeyPair::generate().map_err(tls_error("CA key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let mut tag = [0u8; 4];
    rand::fill(&mut tag);
    dn.push(
        DnType::CommonName,
        format!("unseen federation CA {}", hex::encode(tag)),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, 5 * 365);
    let cert = params
        .self_signed(&key)
        .map_err(tls_error("CA certificate"))?;
    write(&dir.join("ca.crt"), &cert.pem(), false)?;
    write(&ca_key_path, &key.serialize_pem(), true)?;
    issue(dir, names)
}

fn read(path: &Path) -> Result<String, NodeError> {
    std::fs::read_to_string(path).map_err(|e| NodeError::io(path, e))
}

/// The CA in `dir`: its certificate (PEM) and the issuer that signs with its key.
fn ca(dir: &Path) -> Result<(String, Issuer<'static, KeyPair>), NodeError> {
    let ca_pem = read(&dir.join("ca.crt"))?;
    let ca_key = KeyPair::from_pem(&read(&dir.join("ca.key"))?).map_err(tls_error("CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(tls_error("CA certificate"))?;
    Ok((ca_pem, issuer))
}

/// Issues a certificate for each name with the CA in `dir`.
pub fn issue(dir: &Path, names: &[String]) -> Result<(), NodeError> {
    let (ca_pem, issuer) = ca(dir)?;
    for name in names {
        check_name("name", name).map_err(NodeError::Tls)?;
        let key = KeyPair::generate().map_err(tls_error(name))?;
        let mut params = CertificateParams::new(vec![name.clone()]).map_err(tls_error(name))?;
        params
            .distinguished_name
            .push(DnType::CommonName, name.clone());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut params, 2 * 365);
        let cert = params.signed_by(&key, &issuer).map_err(tls_error(name))?;
        let out = dir.join(name);
        write(&out.join("node.crt"), &cert.pem(), false)?;
        write(&out.join("node.key"), &key.serialize_pem(), true)?;
        write(&out.join("ca.crt"), &ca_pem, false)?;
    }
    Ok(())
}

/// Revokes the certificates issued to `names` by the CA in `dir`: writes the CA's revocation
/// list `<dir>/ca.crl` anew (signed, with every certificate it listed before and these), and
/// moves each name's directory to `<dir>/revoked/<name>-<serial>` so the name can be issued
/// again. Returns the list's path: copy it to every node that trusts this CA (the file a
/// node's `tls.crls` names; nodes read it again when it changes).
pub fn revoke(dir: &Path, names: &[String]) -> Result<PathBuf, NodeError> {
    let (_, issuer) = ca(dir)?;
    let crl_path = dir.join("ca.crl");
    let now = time::OffsetDateTime::now_utc();
    let mut revoked = Vec::new();
    if crl_path.exists() {
        let der = CertificateRevocationListDer::from_pem_file(&crl_path)
            .map_err(|e| NodeError::Tls(format!("{}: {e}", crl_path.display())))?;
        let refused = |e: webpki::Error| NodeError::Tls(format!("{}: {e:?}", crl_path.display()));
        let list = webpki::BorrowedCertRevocationList::from_der(&der).map_err(refused)?;
        for entry in &list {
            let entry = entry.map_err(refused)?;
            let when =
                time::OffsetDateTime::from_unix_timestamp(entry.revocation_date.as_secs() as i64)
                    .unwrap_or(now);
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(entry.serial_number),
                revocation_time: when,
                reason_code: None,
                invalidity_date: None,
            });
        }
    }
    let mut moves = Vec::new();
    let mut names = names.to_vec();
    names.sort();
    names.dedup();
    for name in &names {
        check_name("name", name).map_err(NodeError::Tls)?;
        let cert_path = dir.join(name).join("node.crt");
        let cert = CertificateDer::from_pem_file(&cert_path)
            .map_err(|e| NodeError::Tls(format!("{}: {e}", cert_path.display())))?;
        let serial = webpki::EndEntityCert::try_from(&cert)
            .map_err(|e| NodeError::Tls(format!("{}: {e:?}", cert_path.display())))?
            .serial()
            .to_vec();
        let serial = SerialNumber::from_slice(&serial);
        if !revoked.iter().any(|r| r.serial_number == serial) {
            revoked.push(RevokedCertParams {
                serial_number: serial.clone(),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            });
        }
        let to = dir
            .join("revoked")
            .join(format!("{name}-{}", hex::encode(serial.to_bytes())));
        moves.push((dir.join(name), to));
    }
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(365),
        // Increasing with every list this CA signs (RFC 5280, 5.2.3).
        crl_number: SerialNumber::from_slice(&(now.unix_timestamp_nanos() as u64).to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(&issuer)
        .and_then(|crl| crl.pem())
        .map_err(tls_error("revocation list"))?;
    // Written whole, then renamed over the old list: a node never reads half a list.
    let partial = dir.join("ca.crl.partial");
    let _ = std::fs::remove_file(&partial);
    write(&partial, &crl, false)?;
    std::fs::rename(&partial, &crl_path).map_err(|e| NodeError::io(&crl_path, e))?;
    for (from, to) in moves {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| NodeError::io(parent, e))?;
        }
        std::fs::rename(&from, &to).map_err(|e| NodeError::io(&from, e))?;
    }
    Ok(crl_path)
}
