//! The simulator's random numbers: SplitMix64, written out here so that a scenario's stream
//! never changes with a `rand` upgrade (`rand` documents that its small generators may).
//! Every asset owns one, seeded from the scenario seed and the asset's number, so an asset's
//! readings do not depend on how assets are spread over threads.

use std::convert::Infallible;

use rand::TryRng;

/// SplitMix64 (Steele, Lea and Flood, 2014): 8 bytes of state, passes BigCrush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator for stream `stream` of `seed` (streams: assets, incident processes...).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut rng = SimRng(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        // Decorrelate neighbouring streams.
        rng.bits();
        rng.bits();
        rng
    }

    /// The next 64 random bits.
    #[inline]
    pub fn bits(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    #[inline]
    pub fn unit(&mut self) -> f64 {
        (self.bits() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[low, high)`.
    #[inline]
    pub fn range(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    /// Uniform in `0..n` (`n > 0`).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.bits()) * u128::from(n)) >> 64) as u64
    }

    /// A standard normal variate (Box–Muller; one of the pair is dropped for simplicity).
    #[inline]
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit(); // (0, 1]
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// An exponential variate with mean `mean`.
    #[inline]
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

impl TryRng for SimRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.bits() >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.bits())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.bits().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| SimRng::new(7, 1).bits()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]), "same seed and stream, same first number");
        let mut one = SimRng::new(7, 1);
        let mut two = SimRng::new(7, 2);
        assert_ne!((one.bits(), one.bits()), (two.bits(), two.bits()));
    }

    #[test]
    fn moments_are_about_right() {
        let mut rng = SimRng::new(20_261_128, 0);
        let n = 200_000;
        let (mut sum, mut sq, mut exp) = (0.0, 0.0, 0.0);
        for _ in 0..n {
            let z = rng.normal();
            sum += z;
            sq += z * z;
            exp += rng.exponential(3.0);
            let b = rng.below(10);
            assert!(b < 10);
        }
        let n = f64::from(n);
        assert!((sum / n).abs() < 0.01, "mean {}", sum / n);
        assert!((sq / n - 1.0).abs() < 0.02, "variance {}", sq / n);
        assert!((exp / n - 3.0).abs() < 0.05, "exponential mean {}", exp / n);
    }
}
