//! Inputs for the stable front end and the CI replay: a small deterministic generator and
//! byte-level mutations of corpus entries (no coverage feedback: libFuzzer adds that).

/// xorshift64*: deterministic, seedable, fast.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator; any seed (0 is replaced).
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// `len` random bytes.
pub fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// A mutation of `seed`, or of another corpus entry spliced in: flips, byte and u64 overwrites
/// with edge values, inserts, deletes, duplicated slices.
pub fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8], max_len: usize) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(7) {
            0 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] = rng.next_u64() as u8;
            }
            2 => {
                let edge = crate::input::EDGES[rng.below(crate::input::EDGES.len())];
                let end = (at + 8).min(data.len());
                let bytes = edge.to_le_bytes();
                data.splice(at..end, bytes.iter().copied());
            }
            3 => {
                let n = 1 + rng.below(16);
                let bytes = random_bytes(rng, n);
                data.splice(at..at, bytes);
            }
            4 if !data.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                data.drain(at.min(end)..end);
            }
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let end = (from + 1 + rng.below(64)).min(other.len());
                data.splice(at..at, other[from..end].iter().copied());
            }
            _ if !data.is_empty() => {
                let from = rng.below(data.len());
                let end = (from + 1 + rng.below(32)).min(data.len());
                let copy = data[from..end].to_vec();
                data.splice(at..at, copy);
            }
            _ => data.push(rng.next_u64() as u8),
        }
    }
    data.truncate(max_len);
    data
}
