//! Sizes as people and op-logs write them: `4K`, `2M`, `1.5G`.

use core::fmt;

/// Formats a byte count with a binary suffix (`4K`, `2M`, `1.5G`) for people.
pub fn fmt_bytes(bytes: u64) -> SizeFmt {
    SizeFmt(bytes)
}

/// Display adapter returned by [`fmt_bytes`].
#[derive(Clone, Copy, Debug)]
pub struct SizeFmt(pub u64);

impl fmt::Display for SizeFmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u32); 5] = [("T", 40), ("G", 30), ("M", 20), ("K", 10), ("", 0)];
        let b = self.0;
        for (suffix, shift) in UNITS {
            let unit = 1u64 << shift;
            if b >= unit || shift == 0 {
                if b % unit == 0 {
                    return f.pad(&alloc::format!("{}{}", b >> shift, suffix));
                }
                let tenths = (b as u128 * 10 / unit as u128) as u64;
                return f.pad(&alloc::format!("{}.{}{}", tenths / 10, tenths % 10, suffix));
            }
        }
        unreachable!("the loop ends with shift 0")
    }
}
