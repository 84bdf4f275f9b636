// Tiling, blending second (core tile.rs, Blend::add): add one tile's output into the image
// accumulator with its separable raised-cosine window,
//   acc[c, y, x] += (wx[q] * wy[r]) * tile[c, r, q],   wsum[y, x] += wx[q] * wy[r],
// for the tile's pixels (x, y) = (tile_x + q, tile_y + r). One dispatch per tile, so no two
// invocations write one pixel. Storage buffers are all read_write: burn's allocator may place
// several of them in one wgpu buffer, and WebGPU forbids mixing read and read_write bindings of
// one buffer in a dispatch. The parameters come last, as cubecl binds its uniform.
struct Params {
    image_w: u32, image_h: u32,   // accumulator size
    tile_x: u32, tile_y: u32,     // tile origin in the image
    tile_w: u32, tile_h: u32,     // the tile's image rectangle
    padded_w: u32, padded_h: u32, // the tile output's (padded) size
}

@group(0) @binding(0) var<storage, read_write> tile: array<f32>;
@group(0) @binding(1) var<storage, read_write> win: array<f32>; // wx (tile_w), then wy (tile_h)
@group(0) @binding(2) var<storage, read_write> acc: array<f32>;
@group(0) @binding(3) var<storage, read_write> wsum: array<f32>;
@group(0) @binding(4) var<uniform> prm: Params;

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let q = id.x;
    let r = id.y;
    if (q >= prm.tile_w || r >= prm.tile_h) { return; }
    let w = win[q] * win[prm.tile_w + r];
    let n = prm.image_w * prm.image_h;
    let at = (prm.tile_y + r) * prm.image_w + prm.tile_x + q;
    let tn = prm.padded_w * prm.padded_h;
    wsum[at] = wsum[at] + w;
    for (var c = 0u; c < 3u; c++) {
        acc[c * n + at] = acc[c * n + at] + w * tile[c * tn + r * prm.padded_w + q];
    }
}
