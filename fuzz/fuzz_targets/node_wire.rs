//! The node's decoders of peer input: a chunked delivery through the pure `Reassembler`
//! (even first byte) and a PSI message through the protobuf mapping (odd first byte). Never a
//! panic; a reassembled message has exactly the announced chunks and bytes; a PSI message that
//! maps to psi's types maps back to a body that maps to the same values.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use node::internal::psi_proto::{self, Body};
use node::internal::{ChunkError, Reassembler};
use node::proto::Chunk;

#[derive(Arbitrary, Debug)]
struct ArbChunk {
    version: u32,
    other_job: bool,
    other_sender: bool,
    seq: u64,
    attempt: u32,
    kind: u8,
    index: u32,
    count: u32,
    total_bytes: u64,
    data: Vec<u8>,
}

impl ArbChunk {
    fn chunk(self) -> Chunk {
        const KINDS: [&str; 7] = [
            "psi",
            "fedlearn",
            "abort",
            "scoring-seed",
            "interrupt",
            "plan",
            "gossip",
        ];
        Chunk {
            version: self.version % 4,
            job_id: if self.other_job { "j2" } else { "j1" }.into(),
            sender: if self.other_sender { "utility" } else { "tax" }.into(),
            seq: self.seq % 4,
            attempt: self.attempt % 2,
            kind: KINDS[usize::from(self.kind) % KINDS.len()].into(),
            index: self.index % 8,
            count: self.count % 8,
            total_bytes: self.total_bytes % 4096,
            data: self.data,
        }
    }
}

fn reassemble(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let first = ArbChunk::arbitrary(u)?.chunk();
    let announced = (first.count, first.total_bytes);
    let Ok(mut message) = Reassembler::start(first, 2048) else {
        return Ok(());
    };
    let mut pushed = 1;
    while !u.is_empty() {
        let chunk = ArbChunk::arbitrary(u)?.chunk();
        match message.push(&chunk) {
            Ok(()) => pushed += 1,
            Err(ChunkError::Discontinuous { .. } | ChunkError::Overlong) => return Ok(()),
            Err(other) => panic!("push can only be discontinuous or overlong: {other}"),
        }
    }
    if let Ok((_, bytes)) = message.finish() {
        assert_eq!((pushed, bytes.len() as u64), announced);
    }
    Ok(())
}

/// Maps a decoded body to psi's types and back; whatever maps once maps again the same.
fn round_trip(body: &Body) {
    let again = |body: Body| {
        let bytes = psi_proto::encode_psi(body);
        psi_proto::decode_psi("tax", &bytes).expect("an encoded body decodes")
    };
    match body {
        Body::GuestHello(h) => {
            if let Ok(hello) = psi_proto::guest_hello_from_proto("tax", h) {
                let Body::GuestHello(back) = again(psi_proto::guest_hello_to_proto(&hello)) else {
                    panic!("kind changed");
                };
                assert_eq!(psi_proto::guest_hello_from_proto("tax", &back).unwrap(), hello);
            }
        }
        Body::HostHello(h) => {
            let hello = psi_proto::host_hello_from_proto(h);
            let Body::HostHello(back) = again(psi_proto::host_hello_to_proto(&hello)) else {
                panic!("kind changed");
            };
            assert_eq!(psi_proto::host_hello_from_proto(&back), hello);
        }
        Body::Points(p) => {
            if let Ok(points) = psi_proto::points_from_proto("tax", p) {
                let Body::Points(back) = again(psi_proto::points_to_proto(&points)) else {
                    panic!("kind changed");
                };
                assert_eq!(psi_proto::points_from_proto("tax", &back).unwrap(), points);
            }
        }
        Body::Tags(t) => {
            if let Ok(tags) = psi_proto::tags_from_proto("tax", t) {
                let Body::Tags(back) = again(psi_proto::tags_to_proto(&tags)) else {
                    panic!("kind changed");
                };
                assert_eq!(psi_proto::tags_from_proto("tax", &back).unwrap(), tags);
            }
        }
        Body::Alignment(a) => {
            if let Ok(alignment) = psi_proto::alignment_from_proto("tax", a) {
                let Body::Alignment(back) = again(psi_proto::alignment_to_proto(&alignment))
                else {
                    panic!("kind changed");
                };
                assert_eq!(
                    psi_proto::alignment_from_proto("tax", &back).unwrap(),
                    alignment
                );
            }
        }
        Body::PartitionPlan(p) => {
            if let Ok(plan) = psi_proto::plan_from_proto("tax", p) {
                let Body::PartitionPlan(back) = again(psi_proto::plan_to_proto(&plan)) else {
                    panic!("kind changed");
                };
                assert_eq!(psi_proto::plan_from_proto("tax", &back).unwrap(), plan);
            }
        }
        Body::PartitionSizes(s) => {
            if let Ok(sizes) = psi_proto::sizes_from_proto("tax", s) {
                let Body::PartitionSizes(back) = again(psi_proto::sizes_to_proto(&sizes)) else {
                    panic!("kind changed");
                };
                assert_eq!(psi_proto::sizes_from_proto("tax", &back).unwrap(), sizes);
            }
        }
        Body::PartitionSchedule(s) => {
            if let Ok(schedule) = psi_proto::schedule_from_proto("tax", s) {
                let Body::PartitionSchedule(back) =
                    again(psi_proto::schedule_to_proto(&schedule))
                else {
                    panic!("kind changed");
                };
                assert_eq!(psi_proto::schedule_from_proto("tax", &back).unwrap(), schedule);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let _ = reassemble(&mut Unstructured::new(rest));
    } else if let Ok(body) = psi_proto::decode_psi("tax", rest) {
        round_trip(&body);
    }
});
