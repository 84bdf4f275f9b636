// Planar signed RGB [3, in_h, in_w] in [-1, 1] -> 8-bit RGBA, opaque (one u32 per pixel) for the
// top-left out_w x out_h pixels: a tile's preview or the finished image, read back as bytes.
// Rounds half to even like the CPU path. CPU reference: sampler::to_unit then image::to_rgba.
struct Params { out_w: u32, out_h: u32, in_w: u32, in_plane: u32 }

@group(0) @binding(0) var<storage, read_write> planar: array<f32>;
@group(0) @binding(1) var<storage, read_write> rgba: array<u32>;
@group(0) @binding(2) var<uniform> prm: Params;

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= prm.out_w || id.y >= prm.out_h) { return; }
    let src = id.y * prm.in_w + id.x;
    var p = 0xff000000u;
    for (var c = 0u; c < 3u; c++) {
        let unit = clamp((planar[c * prm.in_plane + src] + 1.0) * 0.5, 0.0, 1.0);
        p = p | (u32(round(unit * 255.0)) << (8u * c));
    }
    rgba[id.y * prm.out_w + id.x] = p;
}
