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
