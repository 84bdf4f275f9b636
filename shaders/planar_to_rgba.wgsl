// Planar signed RGB [3, h, w] in [-1, 1] -> 8-bit RGBA, opaque (one u32 per pixel): the network's
// output to a canvas. Rounds half to even like the CPU path (quantize in core image.rs).
// CPU reference: sampler::to_unit then flowmapsr_web::to_rgba.
struct Dims { width: u32, height: u32 }

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> planar: array<f32>;
@group(0) @binding(2) var<storage, read_write> rgba: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let n = dims.width * dims.height;
    let i = id.x;
    if (i >= n) { return; }
    var p = 0xff000000u;
    for (var c = 0u; c < 3u; c++) {
        let unit = clamp((planar[c * n + i] + 1.0) * 0.5, 0.0, 1.0);
        p = p | (u32(round(unit * 255.0)) << (8u * c));
    }
    rgba[i] = p;
}
