//! Op-log numbers: decimal, suffixes, hexadecimal, malformed and overflowing.

use super::*;

#[test]
fn numbers_decimal_hex_and_suffixes() {
    let cases: &[(&str, u64)] = &[
        ("0", 0),
        ("4096", 4096),
        ("007", 7),
        ("1K", K),
        ("4K", 4 * K),
        ("2M", 2 * M),
        ("4G", 4 * G),
        ("3T", 3 * T),
        ("0K", 0),
        ("0x0", 0),
        ("0x1000", 0x1000),
        ("0x100000000", 1 << 32),
        ("0xfec00000", 0xfec0_0000),
        ("0xFEC00000", 0xfec0_0000),
        ("0xAbCdEf", 0xab_cdef),
        ("0x00000000000000000000000001", 1),
        ("18446744073709551615", u64::MAX),
        ("0xffffffffffffffff", u64::MAX),
        ("16777215T", ((1 << 24) - 1) * T),
        ("17179869183G", u64::MAX >> 30 << 30),
    ];
    for &(token, value) in cases {
        assert_eq!(parse_number(token), Ok(value), "{token}");
    }
}

#[test]
fn numbers_malformed() {
    use NumberError::*;
    let cases: &[(&str, NumberError)] = &[
        ("", Empty),
        ("0x", Empty),
        ("K", Empty),
        ("T", Empty),
        ("0x1M", HexSuffix),
        ("0x10K", HexSuffix),
        ("0xffG", HexSuffix),
        ("0x1T", HexSuffix),
        ("0xK", InvalidDigit),
        ("0X10", InvalidDigit),
        ("0x1g", InvalidDigit),
        ("0x1 ", InvalidDigit),
        ("-1", InvalidDigit),
        ("+1", InvalidDigit),
        ("1_000", InvalidDigit),
        ("4k", InvalidDigit),
        ("2m", InvalidDigit),
        ("1KK", InvalidDigit),
        ("1KB", InvalidDigit),
        ("1.5G", InvalidDigit),
        ("0b101", InvalidDigit),
        ("1e3", InvalidDigit),
        ("٣", InvalidDigit),
        ("18446744073709551616", Overflow),
        ("99999999999999999999999", Overflow),
        ("0x10000000000000000", Overflow),
        ("16777216T", Overflow),
        ("20000000T", Overflow),
        ("17179869184G", Overflow),
        ("18014398509481984K", Overflow),
    ];
    for &(token, reason) in cases {
        assert_eq!(parse_number(token), Err(reason), "{token}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn numbers_round_trip_in_every_spelling(n in any_number()) {
        prop_assert_eq!(parse_number(&format!("{n}")), Ok(n));
        prop_assert_eq!(parse_number(&format!("{n:#x}")), Ok(n));
        prop_assert_eq!(parse_number(&format!("0x{n:X}")), Ok(n));
        for (suffix, shift) in [("K", 10), ("M", 20), ("G", 30), ("T", 40)] {
            let spelled = format!("{}{suffix}", n >> shift);
            if n % (1 << shift) == 0 {
                prop_assert_eq!(parse_number(&spelled), Ok(n));
            }
            prop_assert_eq!(parse_number(&format!("{n:#x}{suffix}")), Err(NumberError::HexSuffix));
        }
    }

    #[test]
    fn suffix_overflow_is_detected(value in any::<u64>(), shift in prop_oneof![Just(10u32), Just(20), Just(30), Just(40)]) {
        let suffix = match shift { 10 => "K", 20 => "M", 30 => "G", _ => "T" };
        let expected = value.checked_mul(1 << shift).ok_or(NumberError::Overflow);
        prop_assert_eq!(parse_number(&format!("{value}{suffix}")), expected);
    }
}
