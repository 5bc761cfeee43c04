//! What crosses between nodes and to clients, apart from the generated protobuf types: the
//! federation version, the kinds of delivery, PSI messages as protobuf ([`psi`]) and the reassembly of chunked deliveries ([`chunks`]).

pub(crate) mod chunks;
pub mod psi;

/// Version of the federation protocol (envelopes and proposals); peers must speak the same.
/// Version 2: proposals carry the host's column preparation. Version 3: jobs resume after an
/// interruption, in numbered attempts. Version 4: audit heads given to peers are signed.
/// Version 5: a trained model's id is a version of its name (`sme-credit@3`). Version 6: PSI
/// runs in parts (psi protocol version 2: a plan, the sizes and a schedule, then one session
/// per part). Version 7: an attempt that aligns again resumes PSI under the same plan (the
/// sizes and the schedule list the parts finished before). Version 8: training and binning
/// speak fedlearn protocol 6 (he format 3: q = 2^192, 118-bit messages), so a node refuses a
/// peer of the old format when they first meet, not in the middle of a job. Version 9: fedlearn
/// protocol 7 (the messages of secret-shared training; keys carry the quantisation scale).
/// Version 10: fedlearn protocol 8 (packing keys of the levels the job's widths call for, sent
/// when the set-up starts); proposals no longer carry a batch size. Version 11: fedlearn
/// protocol 9 (the step size of four parties or more).
pub const FEDERATION_VERSION: u32 = 11;

/// Largest preparation a proposal may carry (JSON bytes).
pub(crate) const MAX_PREP_BYTES: usize = 64 * 1024;

/// What a delivery carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryKind {
    /// A PSI message (protobuf `PsiMessage`).
    Psi,
    /// A training message (`fedlearn::Message` bytes).
    Fedlearn,
    /// The sender stopped the job; the payload is its reason.
    Abort,
    /// A host's seed for the pairwise scoring masks (32 bytes).
    ScoringSeed,
    /// The sender lost this attempt of the job, which resumes in a new one; the payload is
    /// its reason.
    Interrupt,
    /// The guest's plan for a resumed attempt: one byte, 1 to use the alignment every party
    /// kept, 0 to align again.
    Plan,
}

impl DeliveryKind {
    /// Every kind.
    pub const ALL: [DeliveryKind; 6] = [
        DeliveryKind::Psi,
        DeliveryKind::Fedlearn,
        DeliveryKind::Abort,
        DeliveryKind::ScoringSeed,
        DeliveryKind::Interrupt,
        DeliveryKind::Plan,
    ];

    /// The kind's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryKind::Psi => "psi",
            DeliveryKind::Fedlearn => "fedlearn",
            DeliveryKind::Abort => "abort",
            DeliveryKind::ScoringSeed => "scoring-seed",
            DeliveryKind::Interrupt => "interrupt",
            DeliveryKind::Plan => "plan",
        }
    }

    /// The kind a wire name stands for.
    pub fn parse(name: &str) -> Option<DeliveryKind> {
        DeliveryKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for DeliveryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_wire_names() {
        for kind in DeliveryKind::ALL {
            assert_eq!(DeliveryKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(DeliveryKind::parse("scoring_seed"), None);
    }
}
