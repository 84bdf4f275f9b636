//! The wgpu backend (Vulkan; on CPU-only CI Mesa's lavapipe) gives the CPU backend's answer.
//! Needs a Vulkan driver, so the test is `#[ignore]`d: `.ci/run` installs mesa-vulkan-drivers and
//! runs it with `--include-ignored`, where a missing driver fails.

#[cfg(feature = "wgpu")]
#[test]
#[ignore = "needs a Vulkan driver (mesa-vulkan-drivers: .ci/run installs it and runs --include-ignored)"]
fn wgpu_matches_cpu_with_the_shipped_weights() {
    use flowmapsr_core::sampler::{upscale, SampleOptions};
    let lr = flowmapsr_core::Image::new(
        20,
        12,
        3,
        (0..720).map(|i| ((i * 37) % 101) as f32 / 100.0).collect(),
    )
    .unwrap();
    let opts = SampleOptions {
        tile: 48,
        overlap: 8,
        ..Default::default()
    };
    let cpu_dev = burn::backend::flex::FlexDevice;
    let (net, cfg) = flowmapsr_cli::weights::load::<burn::backend::Flex>(None, &cpu_dev).unwrap();
    let cpu = upscale(&net, &cfg, &lr, 4, &opts, &cpu_dev, &mut |_, _| true).unwrap();
    let gpu_dev = burn::backend::wgpu::WgpuDevice::default();
    let (net, cfg) = flowmapsr_cli::weights::load::<burn::backend::Wgpu>(None, &gpu_dev).unwrap();
    let gpu = upscale(&net, &cfg, &lr, 4, &opts, &gpu_dev, &mut |_, _| true).unwrap();
    let bic = flowmapsr_core::resize::upscale(&lr, 4);
    let max = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    };
    let gap = max(&cpu.data, &gpu.data);
    assert!(gap < 2e-3, "wgpu and cpu differ by {gap}");
    eprintln!(
        "wgpu vs cpu: max |diff| {gap}; model vs bicubic: {}",
        max(&cpu.data, &bic.data)
    );
}
