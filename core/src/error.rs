//! The one error type of the core library.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("invalid image: {0}")]
    InvalidImage(String),
    #[error("image too large: {width}x{height} = {pixels} pixels exceeds the limit of {limit}")]
    TooLarge {
        width: usize,
        height: usize,
        pixels: usize,
        limit: usize,
    },
    #[error("unsupported scale x{0}: use 2, 4 or 8")]
    BadScale(u32),
    #[error("invalid parameter: {0}")]
    BadParam(String),
    #[error("bad weights: {0}")]
    BadWeights(String),
    #[error("cancelled")]
    Cancelled,
    /// A worker of a [`crate::pool::TilePool`] failed or went away.
    #[error("worker: {0}")]
    Worker(String),
    #[error("tile {index} at ({x}, {y}) failed: {source}")]
    Tile {
        index: usize,
        x: usize,
        y: usize,
        #[source]
        source: Box<Error>,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
