//! Numbers as text: bytes and parameter counts. The one place bytes become words.

use bytesize::ByteSize;

/// Bytes in binary units, e.g. "3.1 GiB".
pub fn bytes(n: u64) -> String {
    ByteSize(n).display().iec().to_string()
}

/// A parameter count in millions or billions, e.g. "35.6M".
pub fn parameters(n: u64) -> String {
    match n {
        0..=999_999 => format!("{:.1}K", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.2}B", n as f64 / 1e9),
    }
}

/// A candle error as one message, without the backtraces candle attaches when
/// `RUST_BACKTRACE` is set: the user needs what failed, not where in candle.
pub fn candle_error(error: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match error {
        E::WithBacktrace { inner, .. } => candle_error(inner),
        E::Context { inner, context } => format!("{context}: {}", candle_error(inner)),
        E::WithPath { inner, path } => format!("{}: {}", path.display(), candle_error(inner)),
        other => other.to_string(),
    }
}

/// A rate with three significant digits or one decimal, e.g. "0.447", "4.47", "447.2".
pub fn rate(value: f64) -> String {
    match value.abs() {
        v if v < 1.0 => format!("{value:.3}"),
        v if v < 10.0 => format!("{value:.2}"),
        _ => format!("{value:.1}"),
    }
}

/// The units `--memory` accepts: decimal (10³ⁿ) and binary (2¹⁰ⁿ) bytes. A lowercase "b"
/// after a prefix ("Gb") is refused: it usually means bits.
const UNITS: &str = "B, KB, MB, GB, TB (powers of 1000), KiB, MiB, GiB, TiB (powers of 1024), \
                     or K, M, G, T (powers of 1000)";

/// Parses a human byte size: "512MiB", "4GiB", "4 GiB", "4G" (decimal: 4×10⁹), "1500000".
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let unit = trimmed.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.' || c == ' ');
    let unit_ok = match unit.as_bytes() {
        [] | [b'B'] => true,
        [prefix] => b"kKmMgGtT".contains(prefix),
        [prefix, b'B'] => b"kKmMgGtT".contains(prefix),
        [prefix, b'i' | b'I', b'B'] => b"kKmMgGtT".contains(prefix),
        _ => false,
    };
    if !unit_ok {
        let bits = unit.len() >= 2 && unit.ends_with('b');
        let hint = if bits {
            " (a lowercase b means bits: write B for bytes, e.g. 4GB or 4GiB)"
        } else {
            ""
        };
        return Err(format!(
            "{text:?} is not a size in bytes{hint}; write a number (bytes) with one of {UNITS}, \
             e.g. 512MiB or 4GiB (a space before the unit is fine)"
        ));
    }
    let size: ByteSize = trimmed.parse().map_err(|_| {
        format!(
            "{text:?} is not a size; write it like 512MiB, 4GiB or 4G (GiB = 2^30 bytes, G = 10^9)"
        )
    })?;
    Ok(size.as_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_both_unit_systems() {
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("4GiB"), Ok(4 << 30));
        assert_eq!(parse_bytes("4G"), Ok(4_000_000_000));
        assert_eq!(parse_bytes("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("4GB"), Ok(4_000_000_000));
        assert_eq!(parse_bytes("4 GiB"), Ok(4 << 30));
        assert_eq!(parse_bytes("4g"), Ok(4_000_000_000));
        // A lowercase b usually means bits: refused, naming the accepted spellings.
        for bits in ["4Gb", "4gb", "512Mb", "4Gib", "1kb"] {
            let err = parse_bytes(bits).unwrap_err();
            assert!(
                err.contains("GiB") && err.contains("powers of 1024"),
                "{bits}: {err}"
            );
        }
        assert!(parse_bytes("lots").is_err());
        // A space before the unit is accepted, so no message may say otherwise.
        let err = parse_bytes("4 parsecs").unwrap_err();
        assert!(err.contains("a space before the unit is fine"), "{err}");
        assert!(parse_bytes("4 parsecs").is_err());
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn bytes_print_in_binary_units() {
        assert_eq!(bytes(4 << 30), "4.0 GiB");
        assert_eq!(bytes(1536 << 20), "1.5 GiB");
        assert_eq!(bytes(512), "512 B");
    }

    #[test]
    fn candle_errors_lose_their_backtraces() {
        let plain = candle_core::Error::Msg("shape mismatch".into());
        let wrapped = candle_core::Error::WithBacktrace {
            inner: Box::new(plain.context("in the attention")),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert_eq!(candle_error(&wrapped), "in the attention: shape mismatch");
    }

    #[test]
    fn rates_keep_three_significant_digits_when_small() {
        assert_eq!(rate(0.4471), "0.447");
        assert_eq!(rate(4.471), "4.47");
        assert_eq!(rate(447.12), "447.1");
    }

    #[test]
    fn parameters_print_with_a_suffix() {
        assert_eq!(parameters(35_561_472), "35.6M");
        assert_eq!(parameters(124_439_808), "124.4M");
        assert_eq!(parameters(6_738_415_616), "6.74B");
        assert_eq!(parameters(4_000), "4.0K");
    }
}
