//! flowmapsr-core: flow-map image super-resolution (FlowMapSR, arXiv 2601.16660) on burn.
//!
//! A bridge from x0 = up(LR) to x1 = HR in a pixel-unshuffle space, learned as a flow map
//! X_{s,t}(x) = x + (t - s) v(x, s, t) by self-distillation; one network call per tile at NFE 1.
//! Generic over the burn backend; no CLI, no environment; compiles natively and to wasm32.

pub mod adversarial;
pub mod batch;
pub mod bridge;
pub mod cond;
pub mod degrade;
pub mod ema;
pub mod error;
pub mod grain;
pub mod image;
pub mod interpolate;
pub mod lora;
pub mod metrics;
pub mod objectives;
pub mod pool;
pub mod precision;
pub mod projection;
pub mod request;
pub mod resize;
pub mod sampler;
pub mod space;
pub mod tile;
pub mod unet;
pub mod weights;

pub use error::{Error, Result};
pub use image::Image;
