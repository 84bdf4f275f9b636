//! Reading and writing image files: PNG, JPEG and WebP; 8- and 16-bit; gray, RGB and alpha.
//! Decoding checks the header's dimensions against a pixel limit before allocating anything, so
//! a decompression bomb is refused up front. Writing encodes in memory, then renames into place,
//! so a failure never leaves a partial file.

use anyhow::{bail, Context, Result};
use flowmapsr_core::Image;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use std::io::Cursor;
use std::path::Path;

/// A decoded image split into colour (RGB) and optional alpha, both in [0, 1].
pub struct Decoded {
    pub rgb: Image,
    pub alpha: Option<Image>,
    pub sixteen_bit: bool,
    /// A one-channel source (scored on its gray level by the protocol).
    pub gray: bool,
    /// Lossily coded (JPEG, lossy WebP): the LR projection's `auto` leaves it alone.
    pub lossy: bool,
}

/// Default largest input: 16 megapixels (a x4 result is then 256 MP).
pub const DEFAULT_MAX_PIXELS: u64 = 16 * 1024 * 1024;

pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<Decoded> {
    if bytes.is_empty() {
        bail!("empty file");
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .context("reading the image header")?;
    if reader.format().is_none() {
        bail!("not a recognised image (PNG, JPEG or WebP)");
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(4 * 1024 * 1024 * 1024);
    let mut decoder = reader.into_decoder().context("reading the image header")?;
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    if pixels == 0 {
        bail!("the image has no pixels ({w}x{h})");
    }
    if pixels > max_pixels {
        bail!("image too large: {w}x{h} = {pixels} pixels exceeds the limit of {max_pixels} (--max-pixels)");
    }
    decoder.set_limits(limits).context("image limits")?;
    let img = DynamicImage::from_decoder(decoder)
        .context("decoding the image (corrupt or truncated file?)")?;
    let mut d = split(img)?;
    d.lossy = flowmapsr_core::projection::lossy_encoding(bytes);
    Ok(d)
}

fn split(img: DynamicImage) -> Result<Decoded> {
    use image::ColorType::*;
    let color = img.color();
    let sixteen_bit = matches!(color, L16 | La16 | Rgb16 | Rgba16);
    let gray = matches!(color, L8 | L16);
    let has_alpha = color.has_alpha();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let all = if sixteen_bit || matches!(color, Rgb32F | Rgba32F) {
        let px = img.to_rgba16();
        Image::from_interleaved_u16(w, h, 4, px.as_raw())?
    } else {
        let px = img.to_rgba8();
        Image::from_interleaved_u8(w, h, 4, px.as_raw())?
    };
    let rgb = Image::new(w, h, 3, all.data[..3 * w * h].to_vec())?;
    let alpha = has_alpha
        .then(|| Image::new(w, h, 1, all.data[3 * w * h..].to_vec()).expect("sizes match"));
    Ok(Decoded {
        rgb,
        alpha,
        sixteen_bit,
        gray,
        lossy: false,
    })
}

pub fn read(path: &Path, max_pixels: u64) -> Result<Decoded> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    decode(&bytes, max_pixels).with_context(|| format!("{}", path.display()))
}

/// The output format for a path, from its extension.
pub fn format_for(path: &Path) -> Result<ImageFormat> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "png" => Ok(ImageFormat::Png),
        "jpg" | "jpeg" => Ok(ImageFormat::Jpeg),
        "webp" => Ok(ImageFormat::WebP),
        _ => bail!(
            "unsupported output extension '{ext}' for {} (use .png, .jpg or .webp)",
            path.display()
        ),
    }
}

/// Encode RGB (+ alpha) to `format`. 16-bit is kept for PNG; JPEG has no alpha (dropped); WebP
/// is written lossless.
pub fn encode(
    rgb: &Image,
    alpha: Option<&Image>,
    sixteen_bit: bool,
    format: ImageFormat,
) -> Result<Vec<u8>> {
    let (w, h) = (rgb.width as u32, rgb.height as u32);
    let alpha = alpha.filter(|_| format != ImageFormat::Jpeg);
    let merged = match alpha {
        Some(a) => {
            let mut d = rgb.data.clone();
            d.extend_from_slice(&a.data);
            Image::new(rgb.width, rgb.height, 4, d)?
        }
        None => rgb.clone(),
    };
    let img: DynamicImage = match (sixteen_bit && format == ImageFormat::Png, alpha.is_some()) {
        (true, true) => {
            image::ImageBuffer::<image::Rgba<u16>, _>::from_raw(w, h, merged.to_interleaved_u16())
                .map(Into::into)
        }
        (true, false) => {
            image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(w, h, merged.to_interleaved_u16())
                .map(Into::into)
        }
        (false, true) => {
            image::RgbaImage::from_raw(w, h, merged.to_interleaved_u8()).map(Into::into)
        }
        (false, false) => {
            image::RgbImage::from_raw(w, h, merged.to_interleaved_u8()).map(Into::into)
        }
    }
    .context("building the output buffer")?;
    let mut out = Cursor::new(Vec::new());
    match format {
        ImageFormat::Jpeg => {
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
                .encode_image(&img)
                .context("encoding JPEG")?;
        }
        ImageFormat::WebP => {
            let rgba = img.to_rgba8();
            image::codecs::webp::WebPEncoder::new_lossless(&mut out)
                .encode(rgba.as_raw(), w, h, image::ExtendedColorType::Rgba8)
                .context("encoding WebP")?;
        }
        _ => img.write_to(&mut out, format).context("encoding PNG")?,
    }
    Ok(out.into_inner())
}

/// Encode and write atomically (temporary file + rename).
pub fn write(path: &Path, rgb: &Image, alpha: Option<&Image>, sixteen_bit: bool) -> Result<()> {
    let bytes = encode(rgb, alpha, sixteen_bit, format_for(path)?)?;
    flowmapsr_core::weights::write_atomic(path, &bytes)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips_8_and_16_bit_with_alpha() {
        let rgb = Image::new(3, 2, 3, (0..18).map(|v| v as f32 / 17.0).collect()).unwrap();
        let a = Image::new(3, 2, 1, vec![1.0, 0.5, 0.0, 1.0, 1.0, 0.25]).unwrap();
        for sixteen in [false, true] {
            let bytes = encode(&rgb, Some(&a), sixteen, ImageFormat::Png).unwrap();
            let d = decode(&bytes, 100).unwrap();
            assert_eq!(d.sixteen_bit, sixteen);
            let levels = if sixteen { 65535.0 } else { 255.0 };
            assert_eq!(d.rgb.quantized(levels), rgb.quantized(levels));
            assert_eq!(d.alpha.unwrap().quantized(levels), a.quantized(levels));
        }
    }

    #[test]
    fn bad_inputs() {
        assert!(decode(b"", 100)
            .err()
            .unwrap()
            .to_string()
            .contains("empty"));
        assert!(decode(b"hello world, not an image", 100).is_err());
        let rgb = Image::zeros(20, 20, 3);
        let png = encode(&rgb, None, false, ImageFormat::Png).unwrap();
        assert!(decode(&png[..png.len() / 2], 1000).is_err(), "truncated");
        assert!(format!("{:#}", decode(&png, 100).err().unwrap()).contains("too large"));
    }
}
