// 8-bit RGBA (one u32 per pixel, as a canvas's ImageData bytes) -> planar signed RGB [3, h, w] in
// [-1, 1]: the network's input layout. CPU reference: flowmapsr_web::split_rgba then
// Image::to_signed (v / 255 * 2 - 1).
struct Dims { width: u32, height: u32 }

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> rgba: array<u32>;
@group(0) @binding(2) var<storage, read_write> planar: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let n = dims.width * dims.height;
    let i = id.x;
    if (i >= n) { return; }
    let p = rgba[i];
    for (var c = 0u; c < 3u; c++) {
        let v = f32((p >> (8u * c)) & 0xffu) / 255.0;
        planar[c * n + i] = v * 2.0 - 1.0;
    }
}
