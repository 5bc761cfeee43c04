//! The hosts' seeds for the pairwise scoring masks.

use std::collections::BTreeMap;

use crate::error::{NodeError, PeerFault};
use crate::jobs::link::Link;
use crate::wire::DeliveryKind;

/// Hosts agree a seed per pair for the scoring masks: the lower-named host draws it and sends
/// it to the other over their mutually authenticated channel. Returns hex seeds by peer.
pub(crate) fn exchange_scoring_seeds(
    link: &mut Link<'_>,
    party: &str,
    hosts: &[String],
) -> Result<BTreeMap<String, String>, NodeError> {
    let mut seeds = BTreeMap::new();
    for other in hosts.iter().filter(|h| h.as_str() > party) {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        link.send_raw(other, DeliveryKind::ScoringSeed, seed.to_vec(), true)?;
        link.count(other, "sent", "scoring_seed".into(), seed.len());
        seeds.insert(other.clone(), hex::encode(seed));
    }
    for other in hosts.iter().filter(|h| h.as_str() < party) {
        let delivery = link.receive_raw(other)?;
        if delivery.kind != DeliveryKind::ScoringSeed || delivery.bytes.len() != 32 {
            return Err(NodeError::Peer {
                peer: other.clone(),
                fault: PeerFault::OutOfTurn {
                    got: format!("a {:?} message", delivery.kind.as_str()),
                    expected: "the scoring seed",
                },
            });
        }
        link.count(other, "received", "scoring_seed".into(), 32);
        seeds.insert(other.clone(), hex::encode(&delivery.bytes));
    }
    Ok(seeds)
}
