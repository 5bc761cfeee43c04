//! Stored wire bytes per format version, shared by `he/tests/golden.rs` and
//! `fedlearn/tests/golden.rs` (the rule is in `tests/data/wire/README.md`).
//!
//! `tests/data/wire/<family>/v<N>/<kind>.bin` holds one encoded object of each kind. Every run
//! decodes and re-encodes each file of the current version byte for byte, checks that older
//! versions are refused (this build reads only its own version), and fails when the current
//! version's directory lacks a kind. `UNSEEN_BLESS_WIRE=1` writes the missing files of the
//! current version and never touches an existing one.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The environment variable of a bless run.
const BLESS: &str = "UNSEEN_BLESS_WIRE";

/// One family of wire objects (a crate's format).
pub struct Family<'a> {
    /// Directory name under `tests/data/wire/`, and the crate whose test blesses it.
    pub name: &'a str,
    /// The format version this build writes.
    pub current: u32,
    /// Every kind of object the format has: the file stems.
    pub kinds: &'a [&'a str],
}

impl Family<'_> {
    fn root(&self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/wire")
            .join(self.name)
    }

    fn version_dir(&self, version: u32) -> PathBuf {
        self.root().join(format!("v{version}"))
    }

    fn bless_hint(&self) -> String {
        format!("{BLESS}=1 cargo test -p {} --test golden", self.name)
    }

    /// Writes the files of the current version that are missing, from `make` (called only
    /// if one is missing), with `create_new`: an existing file is never replaced.
    fn bless(&self, make: impl FnOnce() -> Vec<(&'static str, Vec<u8>)>) {
        let dir = self.version_dir(self.current);
        let missing: Vec<&str> = self
            .kinds
            .iter()
            .copied()
            .filter(|kind| !dir.join(format!("{kind}.bin")).exists())
            .collect();
        if missing.is_empty() {
            return;
        }
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let made = make();
        let made_kinds: BTreeSet<&str> = made.iter().map(|(kind, _)| *kind).collect();
        assert_eq!(
            made_kinds,
            self.kinds.iter().copied().collect(),
            "the sample objects must cover every kind exactly"
        );
        for (kind, bytes) in made.into_iter().filter(|(k, _)| missing.contains(k)) {
            let path = dir.join(format!("{kind}.bin"));
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            file.write_all(&bytes)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            eprintln!("blessed {} ({} bytes)", path.display(), bytes.len());
        }
    }

    /// The stored versions, ascending.
    fn versions(&self) -> Vec<u32> {
        let root = self.root();
        let entries = fs::read_dir(&root).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; create the files with `{}`",
                root.display(),
                self.bless_hint()
            )
        });
        let mut versions: Vec<u32> = entries
            .map(|entry| {
                let name = entry.expect("a directory entry").file_name();
                let name = name.to_string_lossy();
                name.strip_prefix('v')
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{}/{name} is not a v<N> directory", root.display()))
            })
            .collect();
        versions.sort_unstable();
        versions
    }

    /// Blesses if asked, then checks every stored file: `round_trip(version, kind, bytes)`
    /// decodes `bytes`, stored as `kind` of format `version`, and returns the re-encoding, or
    /// the decoder's error.
    pub fn check(
        &self,
        make: impl FnOnce() -> Vec<(&'static str, Vec<u8>)>,
        round_trip: impl Fn(u32, &str, &[u8]) -> Result<Vec<u8>, String>,
    ) {
        if std::env::var_os(BLESS).is_some_and(|v| v == "1") {
            self.bless(make);
        }
        let versions = self.versions();
        assert!(
            versions.contains(&self.current),
            "no stored {} objects for the current format version {} (a version bump needs \
             its own files): run `{}`",
            self.name,
            self.current,
            self.bless_hint()
        );
        for version in versions {
            assert!(
                version <= self.current,
                "{} objects stored for v{version}, newer than this build's v{}",
                self.name,
                self.current
            );
            let dir = self.version_dir(version);
            let mut found = BTreeSet::new();
            for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = entry.expect("a directory entry").path();
                // An older version may hold kinds a later one retired.
                let kind = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".bin"))
                    .filter(|k| version < self.current || self.kinds.contains(k))
                    .unwrap_or_else(|| panic!("{}: not a <kind>.bin file", path.display()));
                found.insert(kind.to_owned());
                let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                match (round_trip(version, kind, &bytes), version == self.current) {
                    (Ok(again), true) => assert!(
                        again == bytes,
                        "{}: re-encoding differs from the stored bytes ({} vs {} bytes): the \
                         format changed without a version bump",
                        path.display(),
                        again.len(),
                        bytes.len()
                    ),
                    (Err(e), true) => panic!("{}: no longer decodes: {e}", path.display()),
                    (Ok(_), false) => panic!(
                        "{}: an object of v{version} decodes in a v{} build, which must refuse it",
                        path.display(),
                        self.current
                    ),
                    (Err(_), false) => {}
                }
            }
            if version == self.current {
                let missing: Vec<&str> = self
                    .kinds
                    .iter()
                    .copied()
                    .filter(|k| !found.contains(*k))
                    .collect();
                assert!(
                    missing.is_empty(),
                    "{}: no stored {missing:?}: run `{}`",
                    dir.display(),
                    self.bless_hint()
                );
            }
        }
    }
}
