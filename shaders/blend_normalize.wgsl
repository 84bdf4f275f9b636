// Tiling, blending second (core tile.rs, Blend::finish): divide the accumulator by the summed
// window weights where they are not exactly 1 (pixels covered by one tile stay bit-exact).
// A 2-D grid over the image, so large images stay within the 65535 workgroups per dimension.
struct Params { image_w: u32, image_h: u32 }

@group(0) @binding(0) var<storage, read_write> acc: array<f32>;
@group(0) @binding(1) var<storage, read_write> wsum: array<f32>;
@group(0) @binding(2) var<uniform> prm: Params;

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= prm.image_w || id.y >= prm.image_h) { return; }
    let n = prm.image_w * prm.image_h;
    let i = id.y * prm.image_w + id.x;
    let s = wsum[i];
    if (s != 1.0) {
        for (var c = 0u; c < 3u; c++) {
            acc[c * n + i] = acc[c * n + i] / s;
        }
    }
}
