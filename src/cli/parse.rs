//! Turning one flag's text into its value, for clap: sizes, dtypes, devices, the memory to
//! plan for. An error names what was wrong; clap names the flag.

use candle_core::DType;

use super::{Devices, Memories};

/// `--memory` and the estimate's `--memory`: a size in bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    maxbatch::format::parse_bytes(text)
}

/// `--dtype`: candle's names of the dtypes a model trains in, f32, bf16 or f16.
pub fn parse_dtype(text: &str) -> Result<DType, String> {
    match text.to_ascii_lowercase().parse::<DType>() {
        Ok(dtype @ (DType::F32 | DType::BF16 | DType::F16)) => Ok(dtype),
        _ => Err(format!("unknown dtype {text:?}; use f32, bf16 or f16")),
    }
}

/// `--amp`: the half dtype mixed precision computes in, bf16 or f16.
pub fn parse_half_dtype(text: &str) -> Result<DType, String> {
    match parse_dtype(text) {
        Ok(dtype @ (DType::BF16 | DType::F16)) => Ok(dtype),
        _ => Err(format!("{text:?}: mixed precision computes in bf16 or f16")),
    }
}

/// `--device`: one device, or a list of CUDA devices.
pub fn parse_devices(text: &str) -> Result<Devices, String> {
    maxbatch::device::parse_list(text)
        .map(Devices)
        .map_err(|e| e.to_string())
}

/// `--plan-for`: capacities and GPU names, comma-separated.
pub fn parse_memories(text: &str) -> Result<Memories, String> {
    maxbatch::plan::Memory::parse_list(text).map(Memories)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes_parse_and_print() {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            assert_eq!(parse_dtype(dtype.as_str()), Ok(dtype));
        }
        assert!(parse_dtype("int8").is_err());
        assert!(parse_half_dtype("f32").is_err());
        assert_eq!(parse_half_dtype("BF16"), Ok(DType::BF16));
    }
}
