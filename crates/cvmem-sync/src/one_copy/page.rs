//! One mixed 2M page: its 512 bits, and the 32-bit word that holds them when they are few
//! exceptions to one kind (inline) or names the block that holds them.

/// Gfns in a 2M page.
pub(super) const PAGE_GFNS: u32 = 512;
/// Most exceptions an inline word holds.
const INLINE_MAX: usize = 3;

const TAG_SHIFT: u32 = 30;
const TAG_INLINE: u32 = 2;
const TAG_BLOCK: u32 = 3;
const BASE_BIT: u32 = 1 << 29;
const COUNT_SHIFT: u32 = 27;
const OFFSET_MASK: u32 = 0x1ff;
/// Most block indices a word can name.
pub(super) const BLOCK_LIMIT: u32 = 1 << TAG_SHIFT;

/// A mixed page's bits, one per gfn (bit `i % 64` of word `i / 64`).
pub(super) type Bits = [u64; 8];

/// How a mixed page is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Held {
    /// Every gfn is `base` except up to three, listed.
    Inline {
        base: bool,
        count: usize,
        at: [u32; INLINE_MAX],
    },
    /// The bits are in block `index` of the pool.
    Block(u32),
}

impl Held {
    /// The word for this form.
    pub(super) fn encode(self) -> u32 {
        match self {
            Held::Inline { base, count, at } => {
                let mut w = (TAG_INLINE << TAG_SHIFT) | ((count as u32) << COUNT_SHIFT);
                if base {
                    w |= BASE_BIT;
                }
                for (k, &o) in at[..count].iter().enumerate() {
                    w |= (o & OFFSET_MASK) << (18 - 9 * k as u32);
                }
                w
            }
            Held::Block(index) => (TAG_BLOCK << TAG_SHIFT) | index,
        }
    }

    /// The form a word says; any word decodes (a reader may read one being rewritten).
    #[inline]
    pub(super) fn decode(w: u32) -> Held {
        if w >> TAG_SHIFT == TAG_BLOCK {
            return Held::Block(w & (BLOCK_LIMIT - 1));
        }
        let count = ((w >> COUNT_SHIFT) & 3) as usize;
        let mut at = [0; INLINE_MAX];
        for (k, o) in at.iter_mut().enumerate() {
            *o = (w >> (18 - 9 * k as u32)) & OFFSET_MASK;
        }
        Held::Inline {
            base: w & BASE_BIT != 0,
            count,
            at,
        }
    }

    /// The kind of gfn `off` of an inline page.
    #[inline]
    pub(super) fn inline_get(base: bool, count: usize, at: &[u32; INLINE_MAX], off: u32) -> bool {
        base ^ at[..count.min(INLINE_MAX)].contains(&off)
    }

    /// The bits of an inline page.
    pub(super) fn inline_bits(base: bool, count: usize, at: &[u32; INLINE_MAX]) -> Bits {
        let mut bits = if base { [!0; 8] } else { [0; 8] };
        for &o in &at[..count.min(INLINE_MAX)] {
            bits[(o / 64) as usize] ^= 1 << (o % 64);
        }
        bits
    }

    /// The inline form of `bits` if it has one: a mixed page with at most three gfns of the
    /// minority kind.
    pub(super) fn inline_of(bits: &Bits) -> Option<Held> {
        let ones: u32 = bits.iter().map(|w| w.count_ones()).sum();
        let (base, minority) = if ones as usize <= INLINE_MAX {
            (false, ones)
        } else {
            (true, PAGE_GFNS - ones)
        };
        if minority as usize > INLINE_MAX || minority == 0 {
            return None;
        }
        let mut at = [0; INLINE_MAX];
        let mut count = 0;
        for (i, &w) in bits.iter().enumerate() {
            let mut w = if base { !w } else { w };
            while w != 0 {
                at[count] = i as u32 * 64 + w.trailing_zeros();
                count += 1;
                w &= w - 1;
            }
        }
        Some(Held::Inline { base, count, at })
    }
}

/// `Some(v)` when all 512 bits are `v`.
pub(super) fn uniform(bits: &Bits) -> Option<bool> {
    if bits.iter().all(|&w| w == 0) {
        Some(false)
    } else if bits.iter().all(|&w| w == !0) {
        Some(true)
    } else {
        None
    }
}

/// Sets offsets `[a, b)` of `bits` to `v`.
pub(super) fn fill(bits: &mut Bits, a: u32, b: u32, v: bool) {
    for (i, w) in bits.iter_mut().enumerate() {
        let (lo, hi) = (i as u32 * 64, i as u32 * 64 + 64);
        let (s, e) = (a.max(lo), b.min(hi));
        if s >= e {
            continue;
        }
        let n = e - s;
        let mask = if n == 64 {
            !0
        } else {
            ((1u64 << n) - 1) << (s - lo)
        };
        if v {
            *w |= mask;
        } else {
            *w &= !mask;
        }
    }
}

/// The first offset at or after `from` whose bit is not `v`.
pub(super) fn find(bits: &Bits, from: u32, v: bool) -> Option<u32> {
    let mut i = (from / 64) as usize;
    let mut w = if v { !bits[i] } else { bits[i] } & (!0u64 << (from % 64));
    loop {
        if w != 0 {
            return Some(i as u32 * 64 + w.trailing_zeros());
        }
        i += 1;
        if i == 8 {
            return None;
        }
        w = if v { !bits[i] } else { bits[i] };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_round_trips_and_gives_the_bits() {
        let mut bits = [0; 8];
        fill(&mut bits, 7, 8, true);
        fill(&mut bits, 511, 512, true);
        let held = Held::inline_of(&bits).expect("two exceptions fit");
        assert_eq!(Held::decode(held.encode()), held);
        let Held::Inline { base, count, at } = held else {
            panic!("inline expected")
        };
        assert_eq!(Held::inline_bits(base, count, &at), bits);
        assert!(Held::inline_get(base, count, &at, 511));
        assert!(!Held::inline_get(base, count, &at, 0));
        let mut many = !0u64;
        fill(&mut bits, 0, 4, true);
        assert_eq!(Held::inline_of(&bits), None, "six exceptions do not fit");
        bits = [!0; 8];
        fill(&mut bits, 100, 101, false);
        assert!(matches!(
            Held::inline_of(&bits),
            Some(Held::Inline {
                base: true,
                count: 1,
                ..
            })
        ));
        many &= 0;
        assert_eq!(
            Held::inline_of(&[many; 8]),
            None,
            "a uniform page is not mixed"
        );
        assert_eq!(
            Held::decode(Held::Block(12345).encode()),
            Held::Block(12345)
        );
    }

    #[test]
    fn fill_and_find() {
        let mut bits = [0; 8];
        fill(&mut bits, 60, 130, true);
        assert_eq!(find(&bits, 0, false), Some(60));
        assert_eq!(find(&bits, 60, true), Some(130));
        assert_eq!(find(&bits, 130, false), None);
        assert_eq!(uniform(&bits), None);
        fill(&mut bits, 0, 512, true);
        assert_eq!(uniform(&bits), Some(true));
    }
}
