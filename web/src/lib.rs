//! flowmapsr-web: the browser demo (Leptos + trunk, WebGPU with a CPU fallback).
//!
//! Not yet written: the crate exists so the workspace has its final shape and builds.
