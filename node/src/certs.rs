//! `unseen cert`: a CA and node/operator certificates for a federation, so nobody needs
//! openssl. Layout: `<dir>/ca.crt`, `<dir>/ca.key` (keep offline), and per name
//! `<dir>/<name>/{ca.crt,node.crt,node.key}` — the directory a node's `[tls]` or the CLI's
//! `--identity` points at. Keys are ECDSA P-256, certificates valid for two years with the
//! name as DNS subject alternative name, usable as TLS server and client.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

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

/// Issues a certificate for each name with the CA in `dir`.
pub fn issue(dir: &Path, names: &[String]) -> Result<(), NodeError> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| NodeError::io(p, e));
    let ca_pem = read(&dir.join("ca.crt"))?;
    let ca_key = KeyPair::from_pem(&read(&dir.join("ca.key"))?).map_err(tls_error("CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(tls_error("CA certificate"))?;
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
