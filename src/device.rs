//! Which device the trials run on: parsing `cpu`, `cuda`, `cuda:N`, `auto`, and the
//! fallback to the CPU when CUDA cannot be had.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The device the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// The CPU.
    Cpu,
    /// CUDA device N (`cuda` is `cuda:0`).
    Cuda(usize),
    /// CUDA device 0 when there is one, else the CPU.
    #[default]
    Auto,
}

impl FromStr for DeviceRequest {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        match text.to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceRequest::Cpu),
            "auto" => Ok(DeviceRequest::Auto),
            "cuda" | "gpu" => Ok(DeviceRequest::Cuda(0)),
            lower => lower
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceRequest::Cuda)
                .ok_or_else(|| {
                    Error::InvalidDevice(format!(
                        "{text:?}: expected cpu, cuda, cuda:N (e.g. cuda:0), auto, \
                         or a list of CUDA devices (cuda:0,cuda:1)"
                    ))
                }),
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRequest::Cpu => write!(f, "cpu"),
            DeviceRequest::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceRequest::Auto => write!(f, "auto"),
        }
    }
}

/// Parses one device (`cuda:1`) or a list of CUDA devices (`cuda:0,cuda:1`), each
/// searched on its own: what a data-parallel run with one replica per GPU can use is the
/// minimum of their answers.
pub fn parse_list(text: &str) -> Result<Vec<DeviceRequest>, Error> {
    let requests = text
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<DeviceRequest>, Error>>()?;
    if requests.len() > 1 {
        if let Some(other) = requests
            .iter()
            .find(|r| !matches!(r, DeviceRequest::Cuda(_)))
        {
            return Err(Error::InvalidDevice(format!(
                "{text:?}: a list names CUDA devices only (e.g. cuda:0,cuda:1), not {other}"
            )));
        }
        let mut seen = requests.clone();
        seen.sort_by_key(|r| r.to_string());
        seen.dedup();
        if seen.len() != requests.len() {
            return Err(Error::InvalidDevice(format!(
                "{text:?}: a device is named twice"
            )));
        }
    }
    Ok(requests)
}

/// The kind of device trials ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// The CPU, measured against a budget.
    Cpu,
    /// An NVIDIA GPU.
    Cuda,
}

/// A device ready for trials.
#[derive(Debug, Clone)]
pub struct ResolvedDevice {
    /// candle's device.
    pub device: Device,
    /// CPU or CUDA.
    pub kind: DeviceKind,
    /// A name for reports and cache keys, e.g. "cpu" or "cuda:0".
    pub name: String,
    /// Why the CPU is used instead of the CUDA device asked for (None: no fallback).
    pub fallback: Option<String>,
}

impl ResolvedDevice {
    /// Describes a device the caller opened itself.
    pub fn from_device(device: &Device) -> Self {
        match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => ResolvedDevice {
                device: device.clone(),
                kind: DeviceKind::Cuda,
                name: format!("cuda:{gpu_id}"),
                fallback: None,
            },
            _ => cpu(None),
        }
    }
}

/// Opens the requested device. A CUDA request that cannot be met falls back to the CPU,
/// with the reason in [`ResolvedDevice::fallback`], unless `allow_fallback` is false.
pub fn resolve(request: DeviceRequest, allow_fallback: bool) -> Result<ResolvedDevice, Error> {
    let ordinal = match request {
        DeviceRequest::Cpu => return Ok(cpu(None)),
        DeviceRequest::Cuda(n) => n,
        DeviceRequest::Auto => 0,
    };
    match open_cuda(ordinal) {
        Ok(device) => Ok(ResolvedDevice {
            device,
            kind: DeviceKind::Cuda,
            name: format!("cuda:{ordinal}"),
            fallback: None,
        }),
        Err(reason) if allow_fallback => Ok(cpu(Some(reason))),
        Err(reason) => Err(Error::CudaUnavailable { reason }),
    }
}

fn cpu(fallback: Option<String>) -> ResolvedDevice {
    ResolvedDevice {
        device: Device::Cpu,
        kind: DeviceKind::Cpu,
        name: "cpu".to_string(),
        fallback,
    }
}

fn open_cuda(ordinal: usize) -> Result<Device, String> {
    if !candle_core::utils::cuda_is_available() {
        return Err("this maxbatch was built without CUDA support \
                    (rebuild with `--features cuda`, see README)"
            .to_string());
    }
    Device::new_cuda(ordinal).map_err(|e| {
        format!(
            "CUDA device {ordinal} cannot be opened ({})",
            crate::format::candle_error(&e)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling() {
        assert_eq!("cpu".parse::<DeviceRequest>().unwrap(), DeviceRequest::Cpu);
        assert_eq!("CPU".parse::<DeviceRequest>().unwrap(), DeviceRequest::Cpu);
        assert_eq!(
            "auto".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Auto
        );
        assert_eq!(
            "cuda".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Cuda(0)
        );
        assert_eq!(
            "cuda:3".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Cuda(3)
        );
        for bad in ["", "tpu", "cuda:", "cuda:x", "cuda:-1", "cuda0", "cuda:1:2"] {
            assert!(bad.parse::<DeviceRequest>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn lists_name_distinct_cuda_devices() {
        assert_eq!(
            parse_list("cuda:0,cuda:1").unwrap(),
            vec![DeviceRequest::Cuda(0), DeviceRequest::Cuda(1)]
        );
        assert_eq!(parse_list("cpu").unwrap(), vec![DeviceRequest::Cpu]);
        assert_eq!(parse_list("auto").unwrap(), vec![DeviceRequest::Auto]);
        for bad in [
            "cuda:0,cuda:0",
            "cuda:0,cpu",
            "auto,cuda:1",
            "cuda:0,",
            ",",
            "cuda:0;cuda:1",
        ] {
            assert!(parse_list(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn displays_as_it_parses() {
        for r in [
            DeviceRequest::Cpu,
            DeviceRequest::Cuda(2),
            DeviceRequest::Auto,
        ] {
            assert_eq!(r.to_string().parse::<DeviceRequest>().unwrap(), r);
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_falls_back_or_refuses() {
        let resolved = resolve(DeviceRequest::Cuda(0), true).unwrap();
        assert_eq!(resolved.kind, DeviceKind::Cpu);
        assert!(resolved.fallback.unwrap().contains("--features cuda"));

        // The refusal names the setting to drop (the command line as --no-fallback).
        let refused = resolve(DeviceRequest::Cuda(0), false).unwrap_err();
        let named = refused.describe(&|s| format!("<{s:?}>"));
        assert!(named.contains("drop <NoFallback>"), "{named}");

        let auto = resolve(DeviceRequest::Auto, true).unwrap();
        assert_eq!(auto.kind, DeviceKind::Cpu);
        assert!(resolve(DeviceRequest::Cpu, false)
            .unwrap()
            .fallback
            .is_none());
    }
}
