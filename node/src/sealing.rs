//! Secrets at rest. The store's model records (each party's model part and the pairwise
//! scoring seeds a host shares with the other hosts) are sealed with ChaCha20-Poly1305 under
//! a 256-bit node key kept outside the store: a copy of the data directory alone reveals
//! neither, and a record moved to another key (model id) fails to open.
//!
//! The key comes from the file `store_key` names (64 hex digits, readable by the node's user
//! only; created on first start) or from the `UNSEEN_STORE_KEY` environment variable.

use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

use crate::error::NodeError;

/// The environment variable that may hold the key (64 hex digits).
pub const KEY_VARIABLE: &str = "UNSEEN_STORE_KEY";

/// Format of a sealed value: this byte, the nonce, the ciphertext and its tag.
const VERSION: u8 = 1;

/// The node key that seals the store's secrets.
pub struct StoreKey(LessSafeKey);

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(…)")
    }
}

fn key_error(source: &str, reason: impl std::fmt::Display) -> NodeError {
    NodeError::Config {
        path: source.into(),
        reason: reason.to_string(),
    }
}

impl StoreKey {
    fn from_hex(source: &str, text: &str) -> Result<StoreKey, NodeError> {
        let bytes = hex::decode(text.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| key_error(source, "a store key is 64 hex digits"))?;
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .map_err(|_| key_error(source, "not a usable key"))?;
        Ok(StoreKey(LessSafeKey::new(key)))
    }

    /// A fresh random key (tests; `load` creates the file with one).
    pub fn generate() -> StoreKey {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        StoreKey::from_hex("a fresh key", &hex::encode(bytes)).expect("32 bytes make a key")
    }

    /// The key from `file` (created with a fresh key, owner-only, if it does not exist; refused
    /// when other users can read it or when it lies inside `data_dir`), or else from
    /// `UNSEEN_STORE_KEY`.
    pub fn load(file: Option<&Path>, data_dir: &Path) -> Result<StoreKey, NodeError> {
        let Some(path) = file else {
            let text = std::env::var(KEY_VARIABLE).map_err(|_| {
                key_error(
                    "store_key",
                    format!(
                        "no store key: name a file outside data_dir in store_key (it is \
                         created on first start) or set {KEY_VARIABLE}"
                    ),
                )
            })?;
            return StoreKey::from_hex(KEY_VARIABLE, &text);
        };
        let shown = path.display().to_string();
        // Compared as real paths: a symbolic link must not hide the key inside the store.
        let real = |p: &Path| -> std::path::PathBuf {
            match (p.parent(), p.file_name()) {
                (Some(parent), Some(name)) if !p.exists() => parent
                    .canonicalize()
                    .map_or_else(|_| p.to_owned(), |d| d.join(name)),
                _ => p.canonicalize().unwrap_or_else(|_| p.to_owned()),
            }
        };
        if real(path).starts_with(real(data_dir)) {
            return Err(key_error(
                &shown,
                "the store key must be kept outside data_dir, or a copy of the store carries it",
            ));
        }
        if !path.exists() {
            create(path)?;
            tracing::info!(path = %shown, "created a new store key; back it up: the models cannot be read without it");
        }
        if let Some(mode) = crate::tls::readable_by_others(path)? {
            return Err(key_error(
                &shown,
                format!("the store key can be read by other users (mode {mode:o}); chmod 600 it"),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| NodeError::io(path, e))?;
        StoreKey::from_hex(&shown, &text)
    }

    /// Seals `plaintext`, bound to `context` (a record's key).
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        let mut sealed = plaintext.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut sealed,
            )
            .expect("a record is far below ChaCha20-Poly1305's length limit");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens what [`StoreKey::seal`] sealed with `context`; an error when the key, the context
    /// or a byte differs.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, String> {
        let refused = || {
            format!(
                "{context} does not open with this node's store key (another key, an \
                 unsealed record from an older version, or altered bytes)"
            )
        };
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != VERSION {
            return Err(refused());
        }
        let nonce =
            Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN]).map_err(|_| refused())?;
        let mut buffer = sealed[1 + NONCE_LEN..].to_vec();
        let opened = self
            .0
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buffer)
            .map_err(|_| refused())?;
        Ok(opened.to_vec())
    }
}

/// Writes a fresh key to `path`, readable by this user only from the first byte.
fn create(path: &Path) -> Result<(), NodeError> {
    use std::io::Write;
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| NodeError::io(parent, e))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| NodeError::io(path, e))?;
    writeln!(file, "{}", hex::encode(bytes)).map_err(|e| NodeError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_records_open_only_with_their_key_and_context() {
        let key = StoreKey::generate();
        let sealed = key.seal("model:a", b"seeds and weights");
        assert_eq!(key.open("model:a", &sealed).unwrap(), b"seeds and weights");
        assert!(
            !sealed.windows(5).any(|w| w == b"seeds"),
            "sealed bytes hide it"
        );
        assert!(
            key.open("model:b", &sealed).is_err(),
            "another record's key"
        );
        assert!(StoreKey::generate().open("model:a", &sealed).is_err());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(key.open("model:a", &altered).is_err());
        assert!(key.open("model:a", b"{\"plain\": 1}").is_err());
    }

    #[test]
    fn key_files_are_created_private_and_refused_when_loose_or_inside_the_store() {
        let dir = std::env::temp_dir().join(format!("unseen-sealing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (data, file) = (dir.join("data"), dir.join("keys/store.key"));
        let first = StoreKey::load(Some(&file), &data).unwrap();
        let again = StoreKey::load(Some(&file), &data).unwrap();
        assert_eq!(
            again.open("x", &first.seal("x", b"same key")).unwrap(),
            b"same key"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            let error = StoreKey::load(Some(&file), &data).unwrap_err().to_string();
            assert!(error.contains("chmod 600"), "{error}");
        }
        let inside = StoreKey::load(Some(&data.join("store.key")), &data).unwrap_err();
        assert!(inside.to_string().contains("outside data_dir"), "{inside}");
        let short = StoreKey::from_hex("f", "abcd").unwrap_err();
        assert!(short.to_string().contains("64 hex digits"), "{short}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
