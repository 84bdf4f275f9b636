//! The WGSL kernels we own (shaders/*.wgsl), dispatched on burn's wgpu device: WebGPU in the
//! browser worker, Vulkan natively (lavapipe in CI).
//!
//! [`GpuBlender`] is the sampler's device-side [`Blender`] (core sampler.rs, tiling §6): tile
//! outputs never leave the GPU; they are blended into an accumulator there (`blend_add`,
//! `blend_normalize`), and only 8-bit RGBA comes back — each tile's preview and the finished
//! image (`planar_to_rgba`) — a third of the bytes of reading back f32 tiles and blending on the
//! CPU. The kernels are raw WGSL launched through cubecl's client (burn 0.21 has no
//! custom-kernel API without its `template` feature), so they share burn's buffers and queue.

use burn::backend::wgpu::{CubeBackend, CubeTensor, WgpuDevice, WgpuRuntime};
use burn::tensor::{DType, Tensor, TensorPrimitive};
use cubecl::prelude::*;
use cubecl::server::{Handle, KernelArguments, MetadataBindingInfo};
use cubecl::{CompilationError, Compiler, CubeTask};
use flowmapsr_core::sampler::Blender;
use flowmapsr_core::tile::TilePlan;
use flowmapsr_core::{Error, Image, Result};

/// burn's wgpu backend without fusion: the one whose tensors these kernels read and write (the
/// browser build's `burn::backend::Wgpu`).
pub type Gpu = CubeBackend<WgpuRuntime, f32, i32, u32>;

const BLEND_ADD: &str = include_str!("../blend_add.wgsl");
const BLEND_NORMALIZE: &str = include_str!("../blend_normalize.wgsl");
const PLANAR_TO_RGBA: &str = include_str!("../planar_to_rgba.wgsl");

/// One WGSL source with a `main` entry point and 8 x 8 workgroups. Bindings: the storage
/// buffers in order, then the parameters as a uniform (cubecl's layout for launch metadata).
struct Wgsl {
    name: &'static str,
    source: &'static str,
}

const CUBE: CubeDim = CubeDim { x: 8, y: 8, z: 1 };

impl<C: Compiler> CubeTask<C> for Wgsl {
    fn compile(
        &self,
        _compiler: &mut C,
        _options: &C::CompilationOptions,
        _mode: ExecutionMode,
        _address: StorageType,
    ) -> std::result::Result<CompiledKernel<C>, CompilationError> {
        // No representation: wgpu derives the bind group layout from the WGSL itself.
        Ok(CompiledKernel {
            entrypoint_name: "main".into(),
            debug_name: Some(self.name),
            source: self.source.into(),
            repr: None,
            cube_dim: CUBE,
            debug_info: None,
        })
    }
}

impl KernelMetadata for Wgsl {
    fn name(&self) -> &'static str {
        self.name
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info(self.name).cube_dim(CUBE)
    }

    fn address_type(&self) -> StorageType {
        u32::as_type_native_unchecked().storage_type()
    }
}

/// u32 parameters packed two per u64 (little-endian), as cubecl writes its uniform.
fn params(p: &[u32]) -> MetadataBindingInfo {
    let words = p
        .chunks(2)
        .map(|c| c[0] as u64 | (c.get(1).copied().unwrap_or(0) as u64) << 32)
        .collect();
    MetadataBindingInfo::custom(words)
}

fn launch(
    client: &ComputeClient<WgpuRuntime>,
    k: Wgsl,
    (w, h): (usize, usize),
    buffers: Vec<Handle>,
    p: &[u32],
) {
    let count = CubeCount::Static(
        w.div_ceil(CUBE.x as usize) as u32,
        h.div_ceil(CUBE.y as usize) as u32,
        1,
    );
    let args = KernelArguments::new()
        .with_buffers(buffers.into_iter().map(|b| b.binding()).collect())
        .with_info(params(p));
    client.launch(Box::new(k), count, args);
}

fn u32s(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::BadParam(format!("{n} does not fit a GPU index")))
}

/// The float tensor's contiguous wgpu buffer.
fn cube<const D: usize>(t: Tensor<Gpu, D>) -> CubeTensor<WgpuRuntime> {
    match t.into_primitive() {
        TensorPrimitive::Float(t) => burn_cubecl::kernel::into_contiguous(t),
        TensorPrimitive::QFloat(_) => unreachable!("the sampler's tensors are not quantized"),
    }
}

/// `planar_to_rgba.wgsl`: the top-left `w` x `h` pixels of a signed planar [3, in_h, in_w]
/// buffer as opaque RGBA8, read back asynchronously.
async fn planar_to_rgba(
    client: &ComputeClient<WgpuRuntime>,
    planar: &Handle,
    (w, h): (usize, usize),
    (in_w, in_h): (usize, usize),
) -> Result<Vec<u8>> {
    let out = client.empty(4 * w * h);
    let k = Wgsl {
        name: "planar_to_rgba",
        source: PLANAR_TO_RGBA,
    };
    let p = [u32s(w)?, u32s(h)?, u32s(in_w)?, u32s(in_w * in_h)?];
    launch(client, k, (w, h), vec![planar.clone(), out.clone()], &p);
    read(client, out).await
}

async fn read(client: &ComputeClient<WgpuRuntime>, h: Handle) -> Result<Vec<u8>> {
    let mut bytes = client
        .read_async(vec![h])
        .await
        .map_err(|e| Error::BadParam(format!("GPU readback: {e:?}")))?;
    Ok(bytes.remove(0).to_vec())
}

/// The accumulator of one pass: acc [3, h, w] and wsum [h, w] on the device.
struct Pass {
    plan: TilePlan,
    acc: Handle,
    wsum: Handle,
}

/// The sampler's device-side blender on burn's wgpu backend (see the crate docs).
pub struct GpuBlender {
    device: WgpuDevice,
    client: ComputeClient<WgpuRuntime>,
    pass: Option<Pass>,
}

impl GpuBlender {
    pub fn new(device: &WgpuDevice) -> Self {
        Self {
            device: device.clone(),
            client: WgpuRuntime::client(device),
            pass: None,
        }
    }

    /// Whether a `width` x `height` image's accumulator fits one storage binding of this device
    /// (WebGPU's maxStorageBufferBindingSize, 128 MiB by default): larger images blend on the CPU.
    pub fn fits(&self, width: usize, height: usize) -> bool {
        let limit = self.client.properties().memory.max_page_size;
        (3 * width * height * 4) as u64 <= limit && u32::try_from(3 * width * height).is_ok()
    }

    fn pass(&self) -> Result<&Pass> {
        self.pass
            .as_ref()
            .ok_or_else(|| Error::BadParam("blender: tile added before begin".into()))
    }

    fn normalize(&self) -> Result<&Pass> {
        let pass = self.pass()?;
        let (w, h) = (pass.plan.width, pass.plan.height);
        let k = Wgsl {
            name: "blend_normalize",
            source: BLEND_NORMALIZE,
        };
        let bufs = vec![pass.acc.clone(), pass.wsum.clone()];
        launch(&self.client, k, (w, h), bufs, &[u32s(w)?, u32s(h)?]);
        Ok(pass)
    }
}

impl Blender<Gpu> for GpuBlender {
    fn begin(&mut self, plan: &TilePlan) -> Result<()> {
        let (w, h) = (plan.width, plan.height);
        if !self.fits(w, h) {
            return Err(Error::BadParam(format!(
                "a {w}x{h} image does not fit one GPU buffer: blend it on the CPU"
            )));
        }
        let zeros = |n: usize| cube(Tensor::<Gpu, 1>::zeros([n], &self.device)).handle;
        self.pass = Some(Pass {
            plan: plan.clone(),
            acc: zeros(3 * w * h),
            wsum: zeros(w * h),
        });
        Ok(())
    }

    async fn add(&mut self, i: usize, out: Tensor<Gpu, 4>) -> Result<Vec<u8>> {
        let pass = self.pass()?;
        let t = pass.plan.tiles[i];
        let out = cube(out);
        let dims = out.meta.shape().to_vec();
        if out.dtype != DType::F32 || dims != [1, 3, t.padded_h, t.padded_w] {
            return Err(Error::BadParam(format!(
                "tile output is {dims:?} {:?}, expected [1, 3, {}, {}] f32",
                out.dtype, t.padded_h, t.padded_w
            )));
        }
        let (wx, wy) = pass.plan.window(i);
        let win = [wx, wy].concat();
        let win = self.client.create_from_slice(bytemuck::cast_slice(&win));
        let p = [
            u32s(pass.plan.width)?,
            u32s(pass.plan.height)?,
            u32s(t.src.x)?,
            u32s(t.src.y)?,
            u32s(t.src.w)?,
            u32s(t.src.h)?,
            u32s(t.padded_w)?,
            u32s(t.padded_h)?,
        ];
        let k = Wgsl {
            name: "blend_add",
            source: BLEND_ADD,
        };
        let bufs = vec![out.handle.clone(), win, pass.acc.clone(), pass.wsum.clone()];
        launch(&self.client, k, (t.src.w, t.src.h), bufs, &p);
        planar_to_rgba(
            &self.client,
            &out.handle,
            (t.src.w, t.src.h),
            (t.padded_w, t.padded_h),
        )
        .await
    }

    async fn finish(&mut self) -> Result<Image> {
        let pass = self.normalize()?;
        let (w, h) = (pass.plan.width, pass.plan.height);
        let bytes = read(&self.client, pass.acc.clone()).await?;
        self.pass = None;
        let data: Vec<f32> = bytes
            .chunks_exact(4)
            .take(3 * w * h)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Image::new(w, h, 3, data)
    }

    async fn finish_rgba(&mut self) -> Result<Vec<u8>> {
        let pass = self.normalize()?;
        let (w, h) = (pass.plan.width, pass.plan.height);
        let px = planar_to_rgba(&self.client, &pass.acc, (w, h), (w, h)).await?;
        self.pass = None;
        Ok(px)
    }
}
