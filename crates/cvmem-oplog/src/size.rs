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
                // Rounded to the nearest tenth (2 TiB - 4 KiB is "2.0T", not "1.9T"); an exact
                // multiple prints without a decimal.
                let tenths = ((b as u128 * 10 + unit as u128 / 2) / unit as u128) as u64;
                return f.pad(&alloc::format!("{}.{}{}", tenths / 10, tenths % 10, suffix));
            }
        }
        unreachable!("the loop ends with shift 0")
    }
}

#[cfg(test)]
mod rounding_tests {
    use super::fmt_bytes;
    use alloc::string::ToString;

    #[test]
    fn sizes_are_rounded_not_truncated() {
        assert_eq!(fmt_bytes((2 << 40) - 4096).to_string(), "2.0T");
        assert_eq!(fmt_bytes(2 << 40).to_string(), "2T");
        assert_eq!(fmt_bytes(1536 << 20).to_string(), "1.5G");
        assert_eq!(fmt_bytes((1 << 30) + (1 << 20) * 95).to_string(), "1.1G");
        assert_eq!(fmt_bytes(4096).to_string(), "4K");
        assert_eq!(fmt_bytes(100).to_string(), "100");
    }
}
