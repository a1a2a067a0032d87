//! Structured values drawn from the fuzzer's bytes: every byte string decodes to something, and
//! running out of bytes reads zeros.

/// A cursor over fuzz input.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

/// Values at the edges of validation: page and large-page sizes and their neighbours, 32-, 48-,
/// 52- and 64-bit limits, the largest memslot, unaligned values.
pub const EDGES: [u64; 24] = [
    0,
    1,
    0xfff,
    0x1000,
    0x1001,
    0x1f_ffff,
    0x20_0000,
    0x3fff_ffff,
    0x4000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    1 << 47,
    1 << 48,
    1 << 51,
    1 << 52,
    0x7ff_ffff_f000,
    1 << 43,
    1 << 63,
    u64::MAX - 0x1fff,
    u64::MAX - 0xfff,
    0xffff_ffff_ffff_f000,
    u64::MAX - 1,
    u64::MAX,
];

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// The next byte, or 0.
    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// A value in `0..n` (`n` ≤ 256, from one byte).
    pub fn below(&mut self, n: u8) -> u8 {
        self.byte() % n.max(1)
    }

    /// A boolean from one byte.
    pub fn flag(&mut self) -> bool {
        self.byte() & 1 != 0
    }

    /// A little-endian u64 from the next 8 bytes (missing bytes read as 0).
    pub fn u64(&mut self) -> u64 {
        let mut v = [0u8; 8];
        for b in &mut v {
            *b = self.byte();
        }
        u64::from_le_bytes(v)
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// An edge value, a raw u64, or an edge value nudged by a small amount.
    pub fn wild_u64(&mut self) -> u64 {
        match self.below(4) {
            0 => self.u64(),
            1 => EDGES[usize::from(self.below(EDGES.len() as u8))].wrapping_add(self.byte().into()),
            _ => EDGES[usize::from(self.below(EDGES.len() as u8))],
        }
    }

    /// The rest of the input.
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        self.pos = self.data.len();
        rest
    }
}
