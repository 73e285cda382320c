//! A small seeded pseudo-random generator (splitmix64) and a stable hash.
//!
//! Hand-rolled rather than a crate: the market must be identical for a given
//! seed across crate upgrades, and splitmix64 is a few lines with known quality
//! for this use (not cryptographic).

/// splitmix64: one 64-bit state, each call advances it.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// Uniform in `0..bound` (bound > 0). The modulo bias is below 2^-40 for our bounds.
    pub fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0);
        self.next_u64() % bound
    }

    /// Uniform in the open interval (0, 1).
    pub fn unit_open(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
}

/// The splitmix64 finaliser; also used as a stable hash of small integers.
pub fn mix64(value: u64) -> u64 {
    let mut z = value;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Stable hash of a list of integers (FNV-like fold over mix64), independent of Rust's
/// randomised `HashMap` hasher so that runs are reproducible.
pub fn stable_hash(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x243F_6A88_85A3_08D3_u64, |accumulator, part| {
            mix64(accumulator ^ mix64(*part))
        })
}

/// Stable hash of a string (for per-symbol seeds).
pub fn stable_hash_str(text: &str) -> u64 {
    text.bytes()
        .fold(0xCBF2_9CE4_8422_2325_u64, |accumulator, byte| {
            (accumulator ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01B3)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut first = SplitMix64::new(42);
        let mut second = SplitMix64::new(42);
        for _ in 0..100 {
            assert_eq!(first.next_u64(), second.next_u64());
        }
        let mut other = SplitMix64::new(43);
        assert_ne!(SplitMix64::new(42).next_u64(), other.next_u64());
    }

    #[test]
    fn unit_open_is_inside_zero_one() {
        let mut generator = SplitMix64::new(7);
        for _ in 0..10_000 {
            let value = generator.unit_open();
            assert!(value > 0.0 && value < 1.0);
        }
    }
}
