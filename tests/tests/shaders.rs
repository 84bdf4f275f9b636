//! flowmapsr-shaders' WGSL kernels against core's CPU reference, launched exactly as the browser
//! worker launches them (GpuBlender on burn's wgpu device), here on Vulkan (Mesa lavapipe on
//! CPU-only machines). Needs a Vulkan driver, so the tests are `#[ignore]`d: `.ci/run` installs
//! mesa-vulkan-drivers and runs them with `--include-ignored`, where a missing driver fails.

use burn::backend::wgpu::WgpuDevice;
use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use flowmapsr_core::sampler::{self, Blender, CpuBlender};
use flowmapsr_core::tile::TilePlan;
use flowmapsr_core::weights::load_dir;
use flowmapsr_core::Image;
use flowmapsr_shaders::{Gpu, GpuBlender};
use std::path::Path;

fn device() -> WgpuDevice {
    WgpuDevice::default()
}

struct Unpark(std::thread::Thread);
impl std::task::Wake for Unpark {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }
}

/// Drives a future on this thread (wgpu readbacks complete through their wakers).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// A seeded stream of bytes (xorshift): test data without a dependency.
fn bytes(n: usize, mut s: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// Signed values past both ends of [-1, 1], and exact half-level ties for the rounding.
fn signed(n: usize, seed: u64) -> Vec<f32> {
    bytes(n, seed)
        .iter()
        .enumerate()
        .map(|(i, &b)| match i % 4 {
            0 => (b as f32 + 0.5) / 255.0 * 2.0 - 1.0,
            1 => b as f32 / 255.0 * 2.4 - 1.2,
            _ => b as f32 / 255.0 * 2.0 - 1.0,
        })
        .collect()
}

fn tensor<B: burn::tensor::backend::Backend>(img: &Image, dev: &B::Device) -> Tensor<B, 4> {
    Tensor::from_data(
        TensorData::new(img.data.clone(), [1, 3, img.height, img.width]),
        dev,
    )
}

fn byte_diffs(a: &[u8], b: &[u8]) -> (usize, u8) {
    assert_eq!(a.len(), b.len());
    let n = a.iter().zip(b).filter(|(x, y)| x != y).count();
    let worst = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
    (n, worst)
}

/// Every tile's preview (planar_to_rgba), the blended image (blend_add, blend_normalize) and the
/// final 8-bit result agree with CpuBlender (Blend::add / finish, to_unit, to_rgba).
#[test]
#[ignore = "needs a Vulkan driver (mesa-vulkan-drivers: .ci/run installs it and runs --include-ignored)"]
fn gpu_blender_matches_the_cpu_blender() {
    let dev = device();
    let (w, h) = (70usize, 50usize);
    let plan = TilePlan::new(w, h, 32, 8, 2).unwrap();
    assert!(plan.tiles.len() >= 6);
    // Each tile's "network output" differs, so overlaps really blend.
    let outs: Vec<Image> = plan
        .tiles
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let n = 3 * t.padded_w * t.padded_h;
            Image::new(t.padded_w, t.padded_h, 3, signed(n, 3 + i as u64)).unwrap()
        })
        .collect();
    let mut gpu = GpuBlender::new(&dev);
    let mut cpu = CpuBlender::default();
    assert!(gpu.fits(w, h));
    for last in [false, true] {
        Blender::<Gpu>::begin(&mut gpu, &plan).unwrap();
        Blender::<Flex>::begin(&mut cpu, &plan).unwrap();
        for (i, o) in outs.iter().enumerate() {
            let g = block_on(gpu.add(i, tensor::<Gpu>(o, &dev))).unwrap();
            let c = block_on(Blender::<Flex>::add(
                &mut cpu,
                i,
                tensor::<Flex>(o, &Default::default()),
            ))
            .unwrap();
            assert_eq!(byte_diffs(&g, &c), (0, 0), "preview of tile {i}");
        }
        if last {
            let g = block_on(Blender::<Gpu>::finish_rgba(&mut gpu)).unwrap();
            let c = block_on(Blender::<Flex>::finish_rgba(&mut cpu)).unwrap();
            let (n, worst) = byte_diffs(&g, &c);
            eprintln!(
                "finish_rgba: {n} of {} bytes differ, by at most {worst}",
                c.len()
            );
            assert_eq!(n, 0);
        } else {
            let g = block_on(Blender::<Gpu>::finish(&mut gpu)).unwrap();
            let c = block_on(Blender::<Flex>::finish(&mut cpu)).unwrap();
            let err = g
                .data
                .iter()
                .zip(&c.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            eprintln!("blend: max |gpu - cpu| = {err:e} over {} tiles", outs.len());
            assert!(err <= 1e-6, "{err}");
            // Not trivially: in an overlap the blend differs from either tile's own output.
            let x = plan.tiles[0].src.w - 2;
            assert!((c.plane(0)[x] - outs[0].plane(0)[x]).abs() > 1e-3);
        }
    }
}

#[test]
#[ignore = "needs a Vulkan driver (mesa-vulkan-drivers: .ci/run installs it and runs --include-ignored)"]
fn gpu_blender_rejects_bad_tiles() {
    let dev = device();
    let plan = TilePlan::new(20, 12, 16, 4, 2).unwrap();
    let mut gpu = GpuBlender::new(&dev);
    let img = Image::new(16, 12, 3, signed(3 * 16 * 12, 1)).unwrap();
    let e = block_on(gpu.add(0, tensor::<Gpu>(&img, &dev))).unwrap_err();
    assert!(e.to_string().contains("before begin"), "{e}");
    gpu.begin(&plan).unwrap();
    let small = Image::new(8, 12, 3, signed(3 * 8 * 12, 1)).unwrap();
    let e = block_on(gpu.add(0, tensor::<Gpu>(&small, &dev))).unwrap_err();
    assert!(e.to_string().contains("expected [1, 3, 12, 16]"), "{e}");
    // An accumulator past the device's storage-binding limit is refused (the worker then
    // blends on the CPU).
    assert!(!gpu.fits(100_000, 100_000));
    let huge = TilePlan::new(100_000, 100_000, 512, 64, 2).unwrap();
    assert!(gpu.begin(&huge).is_err());
}

/// The whole sampler as the browser runs it on WebGPU (shipped weights on burn wgpu, blended by
/// GpuBlender) against `flowmapsr upscale`'s path (flex, CPU blending): 8-bit results agree
/// within one level (the network itself differs by float rounding between backends).
#[test]
#[ignore = "needs a Vulkan driver (mesa-vulkan-drivers: .ci/run installs it and runs --include-ignored)"]
fn gpu_sampler_matches_the_cpu_sampler() {
    let dev = device();
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("../weights");
    let (net_g, cfg) = load_dir::<Gpu>(&weights, &dev).unwrap();
    let (net_c, _) = load_dir::<Flex>(&weights, &Default::default()).unwrap();
    let (w, h) = (23usize, 17usize);
    let lr = Image::new(
        w,
        h,
        3,
        bytes(3 * w * h, 5)
            .iter()
            .map(|&b| b as f32 / 255.0)
            .collect(),
    )
    .unwrap();
    let opts = flowmapsr_core::request::SampleRequest {
        scale: 2,
        tile: 16,
        overlap: 4,
        ..Default::default()
    }
    .options(false);
    let cpu = sampler::upscale(
        &net_c,
        &cfg,
        &lr,
        2,
        &opts,
        &Default::default(),
        &mut |_, _| true,
    )
    .unwrap();
    let cpu = flowmapsr_core::image::to_rgba(&cpu, None);
    let mut tiles = 0;
    let gpu = block_on(sampler::upscale_async(
        &net_g,
        &cfg,
        &lr,
        2,
        &opts,
        &dev,
        &mut GpuBlender::new(&dev),
        &mut |t| {
            tiles = t.total;
            assert_eq!(t.rgba.len(), 4 * t.rect.w * t.rect.h);
            true
        },
    ))
    .unwrap();
    let (n, worst) = byte_diffs(&gpu, &cpu);
    eprintln!(
        "sampler: {tiles} tiles; {n} of {} bytes differ, by at most {worst}",
        cpu.len()
    );
    assert!(tiles >= 4);
    assert!(worst <= 1, "{worst}");
    // The model changed the bicubic start, so the comparison is not between two bicubics.
    let bic = flowmapsr_core::image::to_rgba(&flowmapsr_core::resize::upscale(&lr, 2), None);
    assert!(byte_diffs(&cpu, &bic).0 > cpu.len() / 10);
}
