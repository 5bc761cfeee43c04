//! Fixed-point encoding of real values as integers, with an explicit scale and bit width.

use crate::error::HeError;

/// Reals as signed integers round(x·2^frac_bits) that must fit in `bits` signed bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedPoint {
    /// Fraction bits: the scale is 2^frac_bits.
    pub frac_bits: u32,
    /// Total signed width, sign included (≤ 63).
    pub bits: u32,
}

impl FixedPoint {
    /// Encodes every value, refusing NaN, infinities and values that do not fit.
    pub fn encode(&self, values: &[f64]) -> Result<Vec<i64>, HeError> {
        let scale = 2f64.powi(self.frac_bits as i32);
        let max = ((1u64 << (self.bits - 1)) - 1) as f64;
        values
            .iter()
            .enumerate()
            .map(|(index, &value)| {
                let scaled = (value * scale).round();
                if !scaled.is_finite() || scaled.abs() > max {
                    return Err(HeError::EncodingOverflow {
                        index,
                        value,
                        bits: self.bits,
                        frac_bits: self.frac_bits,
                    });
                }
                Ok(scaled as i64)
            })
            .collect()
    }

    /// The real value of an encoded integer (or of a sum of them).
    pub fn decode(&self, value: i64) -> f64 {
        value as f64 * 2f64.powi(-(self.frac_bits as i32))
    }

    /// Worst-case rounding error of one encoded value: half a unit in the last place.
    pub fn max_error(&self) -> f64 {
        2f64.powi(-(self.frac_bits as i32) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_rounds_and_refuses_overflow() {
        let format = FixedPoint {
            frac_bits: 8,
            bits: 16,
        };
        assert_eq!(
            format.encode(&[1.0, -0.5, 0.00195]).unwrap(),
            vec![256, -128, 0]
        );
        assert_eq!(format.decode(384), 1.5);
        let err = format.encode(&[0.0, 128.0]).unwrap_err();
        assert_eq!(
            err,
            HeError::EncodingOverflow {
                index: 1,
                value: 128.0,
                bits: 16,
                frac_bits: 8
            }
        );
        assert!(format.encode(&[f64::NAN]).is_err());
        assert!(format.encode(&[f64::INFINITY]).is_err());
        assert_eq!(format.encode(&[127.99]).unwrap(), vec![32765]);
    }
}
