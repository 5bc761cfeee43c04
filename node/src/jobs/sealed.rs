//! Files a job writes under `data_dir` ([`crate::jobs::spill::JobDir`]), sealed with
//! ChaCha20-Poly1305 under a key drawn for the directory and kept in memory only: a copy of
//! `data_dir` reveals no id, label or value of a running job, and once the process ends
//! nobody can read them. A file is blocks of [`BLOCK`] plaintext bytes, each written as its
//! sealed length (u32, little-endian) and the ciphertext with its tag; block `c` of file `f`
//! is sealed under nonce (f, c), so no two blocks share a nonce and a block moved within or
//! between files does not open; the reader expects the number of blocks written, so a file
//! cut anywhere, even between blocks, is refused too.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

use crate::error::NodeError;

/// Plaintext bytes per block: the buffer of each file being written or read (PSI's 256
/// buckets: 16 MiB).
pub(crate) const BLOCK: usize = 64 << 10;

/// The key of one directory's files.
pub(crate) struct FileKey(LessSafeKey);

impl FileKey {
    /// A fresh key from `rand`'s generator (seeded from the operating system's).
    pub(crate) fn random() -> FileKey {
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        rand::fill(&mut secret[..]);
        let key = UnboundKey::new(&CHACHA20_POLY1305, &secret[..]).expect("a 32-byte key");
        FileKey(LessSafeKey::new(key))
    }

    /// Creates file `path` (readable by this node's user only) as file number `file`.
    pub(crate) fn create(&self, path: PathBuf, file: u32) -> Result<SealedWriter<'_>, NodeError> {
        use std::os::unix::fs::OpenOptionsExt;
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| NodeError::io(&path, e))?;
        Ok(SealedWriter {
            key: &self.0,
            file,
            counter: 0,
            block: Vec::with_capacity(BLOCK + CHACHA20_POLY1305.tag_len()),
            out,
            path,
        })
    }

    /// Opens a file written whole with this key.
    pub(crate) fn open(&self, written: &Written) -> Result<SealedReader<'_>, std::io::Error> {
        Ok(SealedReader {
            key: &self.0,
            file: written.file,
            counter: 0,
            block: Vec::with_capacity(BLOCK + CHACHA20_POLY1305.tag_len()),
            at: 0,
            blocks: written.blocks,
            input: File::open(&written.path)?,
        })
    }
}

/// The nonce of block `counter` of file `file`.
fn nonce(file: u32, counter: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[..4].copy_from_slice(&file.to_le_bytes());
    bytes[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// A file being written; [`SealedWriter::finish`] seals the last block.
pub(crate) struct SealedWriter<'k> {
    key: &'k LessSafeKey,
    file: u32,
    counter: u64,
    block: Vec<u8>,
    out: File,
    path: PathBuf,
}

/// A file written whole: what reads it back.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) path: PathBuf,
    file: u32,
    blocks: u64,
}

impl SealedWriter<'_> {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn seal_block(&mut self) -> std::io::Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let nonce = nonce(self.file, self.counter);
        self.counter += 1;
        (self
            .key
            .seal_in_place_append_tag(nonce, Aad::empty(), &mut self.block))
        .map_err(|_| std::io::Error::other("sealing failed"))?;
        self.out
            .write_all(&(self.block.len() as u32).to_le_bytes())?;
        self.out.write_all(&self.block)?;
        self.block.clear();
        Ok(())
    }

    /// Seals and writes what is buffered.
    pub(crate) fn finish(mut self) -> Result<Written, NodeError> {
        self.seal_block()
            .map_err(|e| NodeError::io(&self.path, e))?;
        Ok(Written {
            path: self.path,
            file: self.file,
            blocks: self.counter,
        })
    }
}

impl Write for SealedWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let taken = bytes.len().min(BLOCK - self.block.len());
        self.block.extend_from_slice(&bytes[..taken]);
        if self.block.len() == BLOCK {
            self.seal_block()?;
        }
        Ok(taken)
    }

    /// Blocks are sealed when full and at [`SealedWriter::finish`].
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A sealed file read back: an error on a block that does not open (changed, moved, of
/// another key) or is cut short.
pub(crate) struct SealedReader<'k> {
    key: &'k LessSafeKey,
    file: u32,
    counter: u64,
    block: Vec<u8>,
    at: usize,
    /// Blocks the file was written with.
    blocks: u64,
    input: File,
}

impl SealedReader<'_> {
    /// Reads and opens the next block; false at the end of the file.
    fn next_block(&mut self) -> std::io::Result<bool> {
        let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        if self.counter == self.blocks {
            // Nothing may follow the last block written.
            return match self.input.read(&mut [0u8; 1])? {
                0 => Ok(false),
                _ => Err(invalid("the file is longer than it was written")),
            };
        }
        let mut length = [0u8; 4];
        let cut = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => invalid("the file is shorter than it was written"),
            _ => e,
        };
        self.input.read_exact(&mut length).map_err(cut)?;
        let length = u32::from_le_bytes(length) as usize;
        if length > BLOCK + CHACHA20_POLY1305.tag_len() {
            return Err(invalid("a block is longer than blocks are"));
        }
        self.block.resize(length, 0);
        self.input.read_exact(&mut self.block).map_err(cut)?;
        let nonce = nonce(self.file, self.counter);
        self.counter += 1;
        let plain = (self.key.open_in_place(nonce, Aad::empty(), &mut self.block))
            .map_err(|_| invalid("a block does not open: the file changed"))?
            .len();
        self.block.truncate(plain);
        self.at = 0;
        Ok(true)
    }
}

impl Read for SealedReader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.block.len() && !self.next_block()? {
            return Ok(0);
        }
        let n = buffer.len().min(self.block.len() - self.at);
        buffer[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is written reads back; the bytes on disk hold no plaintext; a changed byte, a
    /// swapped block, another key and a cut file are refused.
    #[test]
    fn sealed_files_read_back_and_refuse_changes() {
        let dir = std::env::temp_dir().join(format!("unseen-sealed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = FileKey::random();
        let text: Vec<u8> = (0..3 * BLOCK + 100)
            .flat_map(|i| format!("sme-{i};").into_bytes())
            .take(3 * BLOCK + 100)
            .collect();
        let mut writer = key.create(dir.join("f"), 7).unwrap();
        writer.write_all(&text).unwrap();
        let written = writer.finish().unwrap();
        let read = |key: &FileKey, written: &Written| -> std::io::Result<Vec<u8>> {
            let mut all = Vec::new();
            key.open(written)?.read_to_end(&mut all)?;
            Ok(all)
        };
        assert_eq!(read(&key, &written).unwrap(), text);
        let disk = std::fs::read(&written.path).unwrap();
        assert!(!disk.windows(8).any(|w| w == b"sme-100;"));
        assert!(read(&FileKey::random(), &written).is_err(), "another key");
        let mut changed = disk.clone();
        changed[BLOCK + 10] ^= 1;
        std::fs::write(&written.path, &changed).unwrap();
        assert!(read(&key, &written).is_err(), "a changed byte");
        let block = 4 + BLOCK + 16;
        let mut swapped = disk[block..2 * block].to_vec();
        swapped.extend_from_slice(&disk[..block]);
        swapped.extend_from_slice(&disk[2 * block..]);
        std::fs::write(&written.path, &swapped).unwrap();
        assert!(read(&key, &written).is_err(), "swapped blocks");
        std::fs::write(&written.path, &disk[..disk.len() - 5]).unwrap();
        assert!(read(&key, &written).is_err(), "a cut block");
        std::fs::write(&written.path, &disk[..3 * block]).unwrap();
        assert!(read(&key, &written).is_err(), "the last block dropped");
        std::fs::write(&written.path, [&disk[..], &disk[..block]].concat()).unwrap();
        assert!(read(&key, &written).is_err(), "a block appended");
        // A block of another file under the same key does not open in this one.
        let mut other = key.create(dir.join("g"), 8).unwrap();
        other.write_all(&text).unwrap();
        let other = other.finish().unwrap();
        let theirs = std::fs::read(&other.path).unwrap();
        std::fs::write(&written.path, [&theirs[..block], &disk[block..]].concat()).unwrap();
        assert!(read(&key, &written).is_err(), "a block from another file");
        std::fs::write(&written.path, &disk).unwrap();
        assert_eq!(read(&key, &written).unwrap(), text, "the file as written");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
