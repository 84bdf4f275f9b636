//! The one place a burn backend is chosen. `--device cpu` (burn's flex: pure-Rust CPU, SIMD and
//! threads), `wgpu` (Vulkan/Metal/DX12; on a CPU-only Linux machine Mesa's lavapipe), `cuda[:N]`
//! (with the `cuda` cargo feature).

use anyhow::{bail, Result};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Wgpu,
    Cuda(usize),
}

impl FromStr for DeviceKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" | "flex" => Ok(Self::Cpu),
            "wgpu" | "vulkan" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda(0)),
            s if s.starts_with("cuda:") => Ok(Self::Cuda(
                s[5..]
                    .parse()
                    .map_err(|_| anyhow::anyhow!("bad device '{s}'"))?,
            )),
            s => bail!("unknown device '{s}': use cpu, wgpu or cuda[:N]"),
        }
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu (burn flex)"),
            Self::Wgpu => write!(f, "wgpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// The device of `kind` for the backend `Self` (the launcher has already matched the kind).
pub trait DeviceOf: burn::tensor::backend::Backend {
    fn device_of(kind: DeviceKind) -> Self::Device;
}

impl DeviceOf for burn::backend::Flex {
    fn device_of(_: DeviceKind) -> Self::Device {
        burn::backend::flex::FlexDevice
    }
}

#[cfg(feature = "wgpu")]
impl DeviceOf for burn::backend::Wgpu {
    fn device_of(_: DeviceKind) -> Self::Device {
        burn::backend::wgpu::WgpuDevice::default()
    }
}

#[cfg(feature = "cuda")]
impl DeviceOf for burn::backend::Cuda {
    fn device_of(kind: DeviceKind) -> Self::Device {
        match kind {
            DeviceKind::Cuda(i) => burn::backend::cuda::CudaDevice::new(i),
            _ => burn::backend::cuda::CudaDevice::new(0),
        }
    }
}

/// burn's cuda backend loads the driver and NVRTC at run time and panics when they are missing:
/// look for them first so `--device cuda` on a machine without them is a clear error.
#[cfg(feature = "cuda")]
pub fn check_cuda() -> Result<()> {
    #[cfg(unix)]
    {
        let find = |what: &str, names: &[&str]| -> Result<()> {
            let mut last = String::new();
            for n in names {
                // SAFETY: loading a system library runs its initialisers, as burn's loader will.
                match unsafe { libloading::Library::new(*n) } {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e.to_string(),
                }
            }
            bail!(
                "--device cuda: cannot load the {what} ({}): {last}. Is an NVIDIA driver and the \
                 CUDA runtime installed, and on LD_LIBRARY_PATH?",
                names.join(", ")
            )
        };
        find("CUDA driver", &["libcuda.so.1", "libcuda.so"])?;
        find(
            "NVRTC runtime compiler",
            &[
                "libnvrtc.so",
                "libnvrtc.so.13",
                "libnvrtc.so.12",
                "libnvrtc.so.11",
            ],
        )?;
    }
    Ok(())
}

/// Call `$body` with `B` bound to the chosen backend type and `device` to its device.
#[macro_export]
macro_rules! with_backend {
    ($kind:expr, |$B:ident, $device:ident| $body:expr) => {{
        match $kind {
            $crate::backend::DeviceKind::Cpu => {
                type $B = burn::backend::Flex;
                let $device = burn::backend::flex::FlexDevice;
                $body
            }
            $crate::backend::DeviceKind::Wgpu => {
                #[cfg(feature = "wgpu")]
                {
                    type $B = burn::backend::Wgpu;
                    let $device = burn::backend::wgpu::WgpuDevice::default();
                    $body
                }
                #[cfg(not(feature = "wgpu"))]
                {
                    anyhow::bail!("this binary was built without the `wgpu` feature")
                }
            }
            $crate::backend::DeviceKind::Cuda(_i) => {
                #[cfg(feature = "cuda")]
                {
                    $crate::backend::check_cuda()?;
                    type $B = burn::backend::Cuda;
                    let $device = burn::backend::cuda::CudaDevice::new(_i);
                    $body
                }
                #[cfg(not(feature = "cuda"))]
                {
                    anyhow::bail!("this binary was built without the `cuda` feature (cargo build --release --features cuda)")
                }
            }
        }
    }};
}
