//! `psi::Work` from a worker's side and its output from the node's: never a panic; work that
//! parses is exactly what `to_bytes` writes, runs, and its own output fits it; an answer the
//! node accepts is exactly the bytes of that answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use psi::{Work, WorkOutput};

/// A fixed unit of work (three ids to blind) the fuzzer's bytes answer in the second mode.
fn fixed() -> Work {
    let mut bytes = vec![1];
    bytes.extend_from_slice(&psi::PROTOCOL_VERSION.to_le_bytes());
    bytes.push(1);
    bytes.extend_from_slice(&[7; 31]);
    bytes.push(0);
    bytes.extend_from_slice(&[9; 32]);
    bytes.extend_from_slice(&3u32.to_le_bytes());
    for id in ["a", "bc", "def"] {
        bytes.extend_from_slice(&(id.len() as u16).to_le_bytes());
        bytes.extend_from_slice(id.as_bytes());
    }
    Work::from_bytes(&bytes).expect("the fixed work parses")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let Ok(work) = Work::from_bytes(bytes) else {
            return;
        };
        assert_eq!(&work.to_bytes()[..], bytes);
        if work.len() <= 64 {
            let output = work.run();
            assert_eq!(work.accept(&output.to_bytes()), Some(output));
        }
    } else if let Some(output) = fixed().accept(bytes) {
        assert_eq!(output.to_bytes(), bytes);
        assert!(matches!(output, WorkOutput::Points(ref p) if p.len() == 3));
    }
});
