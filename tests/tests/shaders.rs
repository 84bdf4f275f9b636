//! The WGSL kernels in shaders/ against core's CPU reference, on a real Vulkan device through
//! wgpu (Mesa lavapipe on CPU-only machines). Needs a Vulkan driver: `.ci/run` installs
//! mesa-vulkan-drivers and sets FLOWMAPSR_TEST_WGPU=1; without it the tests say they are skipped.

use flowmapsr_core::tile::TilePlan;
use flowmapsr_core::Image;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use wgpu::util::DeviceExt;

struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
}

struct Unpark(std::thread::Thread);
impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

fn gpu() -> Option<Gpu> {
    if std::env::var("FLOWMAPSR_TEST_WGPU").as_deref() != Ok("1") {
        eprintln!("skipping: set FLOWMAPSR_TEST_WGPU=1 where a Vulkan driver is installed");
        return None;
    }
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
        .expect("a Vulkan adapter (FLOWMAPSR_TEST_WGPU=1 is set)");
    let (device, queue) =
        block_on(adapter.request_device(&wgpu::DeviceDescriptor::default())).expect("a device");
    Some(Gpu { device, queue })
}

fn shader(g: &Gpu, file: &str) -> wgpu::ShaderModule {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shaders")
        .join(file);
    let src = std::fs::read_to_string(&path).unwrap();
    g.device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(file),
        source: wgpu::ShaderSource::Wgsl(src.into()),
    })
}

fn buffer(g: &Gpu, bytes: &[u8], usage: wgpu::BufferUsages) -> wgpu::Buffer {
    g.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytes,
            usage: usage | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        })
}

fn storage(g: &Gpu, bytes: &[u8]) -> wgpu::Buffer {
    buffer(g, bytes, wgpu::BufferUsages::STORAGE)
}

fn uniform(g: &Gpu, words: &[u32]) -> wgpu::Buffer {
    buffer(g, &u32_bytes(words), wgpu::BufferUsages::UNIFORM)
}

fn dispatch(
    g: &Gpu,
    module: &wgpu::ShaderModule,
    entry: &str,
    bindings: &[(u32, &wgpu::Buffer)],
    groups: (u32, u32),
) {
    let pipeline = g
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
    let entries: Vec<wgpu::BindGroupEntry> = bindings
        .iter()
        .map(|(binding, b)| wgpu::BindGroupEntry {
            binding: *binding,
            resource: b.as_entire_binding(),
        })
        .collect();
    let group = g.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    });
    let mut enc = g.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &group, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, 1);
    }
    g.queue.submit([enc.finish()]);
}

fn read(g: &Gpu, b: &wgpu::Buffer) -> Vec<u8> {
    let staging = g.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: b.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = g.device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(b, 0, &staging, 0, b.size());
    g.queue.submit([enc.finish()]);
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.unwrap());
    g.device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let v = staging.slice(..).get_mapped_range().to_vec();
    v
}

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn to_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
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

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn rgba_to_planar_matches_the_cpu() {
    let Some(g) = gpu() else { return };
    let (w, h) = (37usize, 23usize);
    let rgba = bytes(4 * w * h, 7);
    let n = w * h;
    let out = storage(&g, &vec![0u8; 4 * 3 * n]);
    dispatch(
        &g,
        &shader(&g, "rgba_to_planar.wgsl"),
        "main",
        &[
            (0, &uniform(&g, &[w as u32, h as u32, 0, 0])),
            (1, &storage(&g, &rgba)),
            (2, &out),
        ],
        ((n as u32).div_ceil(64), 1),
    );
    let gpu_out = to_f32(&read(&g, &out));
    let (rgb, _) = flowmapsr_web::split_rgba(&rgba, w, h).unwrap();
    let cpu = rgb.to_signed();
    let err = max_abs(&gpu_out, &cpu);
    eprintln!("rgba_to_planar: max |gpu - cpu| = {err:e}");
    assert!(err <= 1e-6, "{err}");
}

#[test]
fn planar_to_rgba_matches_the_cpu() {
    let Some(g) = gpu() else { return };
    let (w, h) = (29usize, 17usize);
    let n = w * h;
    // Signed values past both ends, and exact half-level ties for the rounding.
    let planar: Vec<f32> = bytes(3 * n, 11)
        .iter()
        .enumerate()
        .map(|(i, &b)| match i % 4 {
            0 => (b as f32 + 0.5) / 255.0 * 2.0 - 1.0,
            1 => b as f32 / 255.0 * 2.4 - 1.2,
            _ => b as f32 / 255.0 * 2.0 - 1.0,
        })
        .collect();
    let out = storage(&g, &vec![0u8; 4 * n]);
    dispatch(
        &g,
        &shader(&g, "planar_to_rgba.wgsl"),
        "main",
        &[
            (0, &uniform(&g, &[w as u32, h as u32, 0, 0])),
            (1, &storage(&g, &f32_bytes(&planar))),
            (2, &out),
        ],
        ((n as u32).div_ceil(64), 1),
    );
    let gpu_out = read(&g, &out);
    let img = Image::new(w, h, 3, planar).unwrap();
    let cpu = flowmapsr_web::to_rgba(&flowmapsr_core::sampler::to_unit(&img).unwrap(), None);
    let diffs = gpu_out.iter().zip(&cpu).filter(|(a, b)| a != b).count();
    let worst = gpu_out
        .iter()
        .zip(&cpu)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    eprintln!(
        "planar_to_rgba: {diffs} of {} bytes differ, by at most {worst}",
        cpu.len()
    );
    assert_eq!(diffs, 0);
}

#[test]
fn blend_tile_matches_the_cpu_tile_plan() {
    let Some(g) = gpu() else { return };
    let (w, h) = (70usize, 50usize);
    let plan = TilePlan::new(w, h, 32, 8, 2).unwrap();
    assert!(plan.tiles.len() >= 6);
    let img = Image::new(
        w,
        h,
        3,
        bytes(3 * w * h, 3)
            .iter()
            .map(|&b| b as f32 / 127.5 - 1.0)
            .collect(),
    )
    .unwrap();
    // Each tile's "network output" differs by tile, so the overlaps must really be blended.
    let f = |i: usize, cut: &Image| {
        let mut o = cut.clone();
        o.data
            .iter_mut()
            .for_each(|v| *v = *v * 0.9 + 0.05 * i as f32);
        o
    };
    let cpu = plan.run(&[&img], 3, |i, cut| Ok(f(i, &cut[0]))).unwrap();

    let add = shader(&g, "blend_tile.wgsl");
    let acc = storage(&g, &vec![0u8; 4 * 3 * w * h]);
    let wsum = storage(&g, &vec![0u8; 4 * w * h]);
    let mut last_params = None;
    for (i, t) in plan.tiles.iter().enumerate() {
        let out = f(i, &plan.extract(&img, i));
        let (wx, wy) = plan.window(i);
        let params = uniform(
            &g,
            &[
                w as u32,
                h as u32,
                t.src.x as u32,
                t.src.y as u32,
                t.src.w as u32,
                t.src.h as u32,
                t.padded_w as u32,
                t.padded_h as u32,
            ],
        );
        dispatch(
            &g,
            &add,
            "add",
            &[
                (0, &params),
                (1, &storage(&g, &f32_bytes(&out.data))),
                (2, &storage(&g, &f32_bytes(&wx))),
                (3, &storage(&g, &f32_bytes(&wy))),
                (4, &acc),
                (5, &wsum),
            ],
            ((t.src.w as u32).div_ceil(8), (t.src.h as u32).div_ceil(8)),
        );
        last_params = Some(params);
    }
    dispatch(
        &g,
        &add,
        "normalize",
        &[(0, &last_params.unwrap()), (4, &acc), (5, &wsum)],
        (((w * h) as u32).div_ceil(64), 1),
    );
    let gpu_out = to_f32(&read(&g, &acc));
    let err = max_abs(&gpu_out, &cpu.data);
    eprintln!(
        "blend_tile: max |gpu - cpu| = {err:e} over {} tiles",
        plan.tiles.len()
    );
    assert!(err <= 1e-5, "{err}");
    // And not trivially: the blend differs from any single tile's output in the overlaps.
    let first = f(0, &plan.extract(&img, 0));
    let t0 = plan.tiles[0];
    let x = t0.src.w - 2; // inside the overlap with the right neighbour
    assert!((cpu.plane(0)[x] - first.plane(0)[x]).abs() > 1e-3);
}
