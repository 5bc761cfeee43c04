//! The arithmetic of joint scores: pairwise masks that cancel in the guest's sum, the
//! fixed-point encoding of partial scores, and probability → points and band.

use sha2::{Digest, Sha256};

use crate::config::ScoringSettings;
use crate::proto::RiskBand;

/// Fixed-point scale of masked partial scores.
const SCALE: f64 = 4_294_967_296.0;

/// The pairwise mask of (seed, model, id), a uniform 64-bit value.
pub(crate) fn mask(seed: &[u8], model: &str, id: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(b"unseen scoring mask v1\0");
    hasher.update(seed);
    hasher.update((model.len() as u64).to_le_bytes());
    hasher.update(model.as_bytes());
    hasher.update((id.len() as u64).to_le_bytes());
    hasher.update(id.as_bytes());
    let digest = hasher.finalize();
    let mut word = [0u8; 8];
    word.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(word)
}

/// A partial score in fixed point (wrapping in 64 bits, so masks can be added).
pub(crate) fn to_fixed(z: f64) -> u64 {
    (z * SCALE).round() as i64 as u64
}

/// A (sum of) fixed-point partial score(s) as a real number.
pub(crate) fn from_fixed(x: u64) -> f64 {
    x as i64 as f64 / SCALE
}

/// Probability, scorecard points and band of a probability of default.
pub(crate) fn scorecard(s: &ScoringSettings, probability: f64) -> (f64, f64, RiskBand) {
    let p = probability.clamp(1e-12, 1.0 - 1e-12);
    let odds = (1.0 - p) / p;
    let points =
        s.base_score + s.points_to_double_odds / std::f64::consts::LN_2 * (odds / s.base_odds).ln();
    let band = if p >= s.red_from {
        RiskBand::Red
    } else if p >= s.yellow_from {
        RiskBand::Yellow
    } else {
        RiskBand::Blue
    };
    (p, points, band)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_masks_cancel_and_fixed_point_round_trips() {
        let seed = [7u8; 32];
        let (za, zb) = (1.25, -3.5);
        let a = to_fixed(za).wrapping_add(mask(&seed, "m", "firm-1"));
        let b = to_fixed(zb).wrapping_sub(mask(&seed, "m", "firm-1"));
        assert!((from_fixed(a.wrapping_add(b)) - (za + zb)).abs() < 1e-9);
        assert_ne!(mask(&seed, "m", "firm-1"), mask(&seed, "m", "firm-2"));
        assert_ne!(mask(&seed, "m", "firm-1"), mask(&seed, "n", "firm-1"));
        assert_ne!(mask(&seed, "m", "firm-1"), mask(&[8u8; 32], "m", "firm-1"));
    }
}
