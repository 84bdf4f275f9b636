// Tiling, blending second (core tile.rs): add one tile's output into the image accumulator with
// its separable raised-cosine window, acc[c, y, x] += wx[q] wy[r] tile[c, r, q] and
// wsum[y, x] += wx[q] wy[r]; then `normalize` divides by wsum where it is not exactly 1 (pixels
// covered by one tile stay bit-exact). Tiles are added one dispatch at a time, so no two
// invocations write one pixel. CPU reference: TilePlan::blend / Blend::add / Blend::finish.
struct Params {
    image_w: u32, image_h: u32,   // accumulator size
    tile_x: u32, tile_y: u32,     // tile origin in the image
    tile_w: u32, tile_h: u32,     // the tile's image rectangle
    padded_w: u32, padded_h: u32, // the tile output's (padded) size
}

@group(0) @binding(0) var<uniform> prm: Params;
@group(0) @binding(1) var<storage, read> tile: array<f32>;
@group(0) @binding(2) var<storage, read> wx: array<f32>;
@group(0) @binding(3) var<storage, read> wy: array<f32>;
@group(0) @binding(4) var<storage, read_write> acc: array<f32>;
@group(0) @binding(5) var<storage, read_write> wsum: array<f32>;

@compute @workgroup_size(8, 8)
fn add(@builtin(global_invocation_id) id: vec3<u32>) {
    let q = id.x;
    let r = id.y;
    if (q >= prm.tile_w || r >= prm.tile_h) { return; }
    let w = wx[q] * wy[r];
    let n = prm.image_w * prm.image_h;
    let at = (prm.tile_y + r) * prm.image_w + prm.tile_x + q;
    let tn = prm.padded_w * prm.padded_h;
    wsum[at] = wsum[at] + w;
    for (var c = 0u; c < 3u; c++) {
        acc[c * n + at] = acc[c * n + at] + w * tile[c * tn + r * prm.padded_w + q];
    }
}

@compute @workgroup_size(64)
fn normalize(@builtin(global_invocation_id) id: vec3<u32>) {
    let n = prm.image_w * prm.image_h;
    let i = id.x;
    if (i >= n) { return; }
    let s = wsum[i];
    if (s != 1.0) {
        for (var c = 0u; c < 3u; c++) {
            acc[c * n + i] = acc[c * n + i] / s;
        }
    }
}
