//! Op-log numbers: decimal with an optional binary suffix, or `0x` hexadecimal.

use super::error::NumberError;

/// Parses one op-log number: decimal with an optional binary `K`/`M`/`G`/`T` suffix (×2^10 … ×2^40),
/// or `0x` hexadecimal without suffix; unsigned, at most 64 bits.
///
/// ```
/// use cvmem_oplog::{parse_number, NumberError};
/// assert_eq!(parse_number("2M"), Ok(2 << 20));
/// assert_eq!(parse_number("0x100000000"), Ok(1 << 32));
/// assert_eq!(parse_number("0x1M"), Err(NumberError::HexSuffix));
/// assert_eq!(parse_number("20000000T"), Err(NumberError::Overflow));
/// ```
pub fn parse_number(token: &str) -> Result<u64, NumberError> {
    match token.strip_prefix("0x") {
        Some(hex) => parse_hex(hex),
        None => parse_decimal(token),
    }
}

/// The suffix shift of `K`, `M`, `G`, `T`.
fn suffix_shift(byte: u8) -> Option<u32> {
    match byte {
        b'K' => Some(10),
        b'M' => Some(20),
        b'G' => Some(30),
        b'T' => Some(40),
        _ => None,
    }
}

fn parse_hex(digits: &str) -> Result<u64, NumberError> {
    let bytes = digits.as_bytes();
    let Some((&last, head)) = bytes.split_last() else {
        return Err(NumberError::Empty);
    };
    if !bytes.iter().all(u8::is_ascii_hexdigit) {
        let suffixed = suffix_shift(last).is_some()
            && !head.is_empty()
            && head.iter().all(u8::is_ascii_hexdigit);
        return Err(if suffixed {
            NumberError::HexSuffix
        } else {
            NumberError::InvalidDigit
        });
    }
    bytes.iter().try_fold(0u64, |value, &b| {
        // Every byte is an ASCII hex digit, checked above.
        let digit = (b as char).to_digit(16).unwrap_or(0);
        value
            .checked_mul(16)
            .and_then(|v| v.checked_add(u64::from(digit)))
            .ok_or(NumberError::Overflow)
    })
}

fn parse_decimal(token: &str) -> Result<u64, NumberError> {
    let bytes = token.as_bytes();
    let (digits, shift) = match bytes.split_last() {
        None => return Err(NumberError::Empty),
        Some((&last, head)) => match suffix_shift(last) {
            Some(shift) => (head, shift),
            None => (bytes, 0),
        },
    };
    if digits.is_empty() {
        return Err(NumberError::Empty);
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(NumberError::InvalidDigit);
    }
    let value = digits.iter().try_fold(0u64, |value, &b| {
        value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or(NumberError::Overflow)
    })?;
    value
        .checked_mul(1u64 << shift)
        .ok_or(NumberError::Overflow)
}
