//! Weights I/O: a model is `config.json` (a [`ModelConfig`]) beside `model.bin`, a burn record
//! (bincode) inside a small checked container:
//!   magic | crc32 (u32 LE) of the payload | payload length (u64 LE) | payload,
//! where the magic says the precision of the floats: b"FMSRWTS1" f32 (what training writes),
//! b"FMSRWTH1" IEEE f16 (half the bytes: the shipped weights, for the browser's download; loads
//! into f32 parameters, each within f16's rounding of 2^-11 relative).
//! The checksum turns a corrupt or truncated file into an error instead of a decoder panic, and
//! the loaded parameter shapes are checked against the config. Loads from bytes, so the browser
//! uses the same path as the CLI.

use crate::bridge::BridgeConfig;
use crate::error::Error;

// Not `Result`: burn's `Config` derive expands to code that names `Result` unqualified.
type Res<T> = crate::error::Result<T>;
use crate::lora::{LoraConfig, UNetLora};
use crate::unet::{UNet, UNetConfig};
use burn::config::Config;
use burn::module::{Module, ModuleVisitor, Param};
use burn::record::{
    BinBytesRecorder, FullPrecisionSettings, HalfPrecisionSettings, PrecisionSettings, Record,
    Recorder,
};
use burn::tensor::{backend::Backend, ElementConversion, Tensor};
use std::path::Path;

const MAGIC: &[u8; 8] = b"FMSRWTS1";
const MAGIC_HALF: &[u8; 8] = b"FMSRWTH1";

/// How a container stores its floats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32: training's checkpoints and the default.
    Full,
    /// IEEE f16: half the bytes.
    Half,
}

impl Precision {
    /// "f16" or "f32".
    pub fn name(self) -> &'static str {
        match self {
            Precision::Full => "f32",
            Precision::Half => "f16",
        }
    }

    fn magic(self) -> &'static [u8; 8] {
        match self {
            Precision::Full => MAGIC,
            Precision::Half => MAGIC_HALF,
        }
    }
}

#[derive(Config, Debug)]
pub struct ModelConfig {
    pub unet: UNetConfig,
    pub bridge: BridgeConfig,
    /// Largest guidance scale w the model was trained for; absent (older weights): 1, no
    /// guidance. Read it with [`ModelConfig::w_max`].
    pub w_max: Option<f32>,
    /// Free-form provenance: how these weights were trained.
    #[config(default = "String::new()")]
    pub notes: String,
}

impl ModelConfig {
    pub fn from_json(bytes: &[u8]) -> Res<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::BadWeights(format!("config.json: {e}")))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("config serialises")
    }

    /// Largest guidance scale w these weights know (1: no guidance).
    pub fn w_max(&self) -> f32 {
        self.w_max.unwrap_or(1.0)
    }

    /// Tile sides in full-resolution pixels must be multiples of this.
    pub fn align(&self) -> usize {
        2 * self.unet.align()
    }
}

/// Any module's record as checked bytes.
pub fn module_to_bytes<B: Backend, M: Module<B>>(m: M) -> Vec<u8> {
    record_to_bytes::<B, _>(m.into_record())
}

/// A module's record as checked bytes with its floats in `precision`; an error where a parameter
/// is beyond f16's range (65504), which would turn into infinity.
pub fn module_to_bytes_as<B: Backend, M: Module<B>>(m: M, precision: Precision) -> Res<Vec<u8>> {
    match precision {
        Precision::Full => Ok(module_to_bytes(m)),
        Precision::Half => {
            let peak = max_abs(&m);
            if !(peak <= f32::from(burn::tensor::f16::MAX)) {
                return Err(Error::BadWeights(format!(
                    "a parameter of magnitude {peak} is beyond f16's range (65504): keep these \
                     weights in full precision"
                )));
            }
            Ok(container::<B, _, HalfPrecisionSettings>(
                m.into_record(),
                precision,
            ))
        }
    }
}

/// The largest parameter magnitude of a module (NaN if any parameter is NaN).
fn max_abs<B: Backend, M: Module<B>>(m: &M) -> f32 {
    struct Peak(f32);
    impl<B: Backend> ModuleVisitor<B> for Peak {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let v: f32 = p.val().abs().max().into_scalar().elem();
            // NaN wins, so that a broken network is never called in range.
            self.0 = if v.is_nan() || self.0.is_nan() {
                f32::NAN
            } else {
                self.0.max(v)
            };
        }
    }
    let mut v = Peak(0.0);
    m.visit(&mut v);
    v.0
}

/// Any record (a module's, an optimizer's) as checked bytes.
pub fn record_to_bytes<B: Backend, R: Record<B>>(r: R) -> Vec<u8> {
    container::<B, _, FullPrecisionSettings>(r, Precision::Full)
}

fn container<B: Backend, R: Record<B>, S: PrecisionSettings>(
    r: R,
    precision: Precision,
) -> Vec<u8> {
    let payload = BinBytesRecorder::<S>::default()
        .record(r, ())
        .expect("in-memory record");
    let mut out = Vec::with_capacity(payload.len() + 20);
    out.extend_from_slice(precision.magic());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The precision a container declares, and its checked payload.
fn payload(bytes: &[u8]) -> Res<(Precision, &[u8])> {
    let precision = match bytes.get(..8) {
        Some(m) if bytes.len() >= 20 && m == MAGIC => Precision::Full,
        Some(m) if bytes.len() >= 20 && m == MAGIC_HALF => Precision::Half,
        _ => {
            return Err(Error::BadWeights(
                "not a flowmapsr weights file (bad header)".into(),
            ))
        }
    };
    let crc = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
    let p = &bytes[20..];
    if p.len() != len {
        return Err(Error::BadWeights(format!(
            "truncated: {} of {len} bytes",
            p.len()
        )));
    }
    if crc32fast::hash(p) != crc {
        return Err(Error::BadWeights("checksum mismatch (corrupt file)".into()));
    }
    Ok((precision, p))
}

struct Shapes(Vec<Vec<usize>>);
impl<B: Backend> ModuleVisitor<B> for Shapes {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        self.0.push(p.val().dims().to_vec());
    }
}

fn shapes<B: Backend, M: Module<B>>(m: &M) -> Vec<Vec<usize>> {
    let mut s = Shapes(Vec::new());
    m.visit(&mut s);
    s.0
}

/// A record from checked bytes, in either precision.
pub fn record_from_bytes<B: Backend, R: Record<B>>(bytes: &[u8], device: &B::Device) -> Res<R> {
    let (precision, p) = payload(bytes)?;
    let p = p.to_vec();
    let device = device.clone();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || match precision {
        Precision::Full => BinBytesRecorder::<FullPrecisionSettings>::default().load(p, &device),
        Precision::Half => BinBytesRecorder::<HalfPrecisionSettings>::default().load(p, &device),
    }))
    .map_err(|_| Error::BadWeights("the record does not match what was expected".into()))?
    .map_err(|e| Error::BadWeights(format!("record: {e}")))
}

/// Load checked bytes into `template` (a freshly initialised module of the right architecture).
pub fn module_from_bytes<B: Backend, M: Module<B>>(
    template: M,
    bytes: &[u8],
    device: &B::Device,
) -> Res<M> {
    let expect = shapes(&template);
    let record = record_from_bytes::<B, M::Record>(bytes, device)?;
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        template.load_record(record)
    }))
    .map_err(|_| Error::BadWeights("the record does not match this architecture".into()))?;
    if shapes(&loaded) != expect {
        return Err(Error::BadWeights(
            "parameter shapes do not match config.json".into(),
        ));
    }
    Ok(loaded)
}

/// burn draws parameters lazily, at first use, and a clone taken before that draws its own
/// values: draw them all now, in module order, so copies, checkpoints and replicas agree.
pub fn materialize<B: Backend, M: Module<B>>(m: M) -> M {
    struct Draw;
    impl<B: Backend> burn::module::ModuleMapper<B> for Draw {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let _ = p.val();
            p
        }
    }
    m.map(&mut Draw)
}

/// A model from the two files' contents.
pub fn load_model<B: Backend>(
    config_json: &[u8],
    model_bin: &[u8],
    device: &B::Device,
) -> Res<(UNet<B>, ModelConfig)> {
    let cfg = ModelConfig::from_json(config_json)?;
    if cfg.unet.widths.is_empty()
        || cfg.unet.widths.len() != cfg.unet.blocks.len()
        || cfg.unet.widths.len() > 6
    {
        return Err(Error::BadWeights(
            "config.json: widths and blocks must be 1..=6 levels long".into(),
        ));
    }
    let net = module_from_bytes(cfg.unet.init::<B>(device), model_bin, device)?;
    Ok((net, cfg))
}

/// Load `dir/config.json` + `dir/model.bin`.
pub fn load_dir<B: Backend>(dir: &Path, device: &B::Device) -> Res<(UNet<B>, ModelConfig)> {
    let read = |f: &str| {
        std::fs::read(dir.join(f))
            .map_err(|e| Error::BadWeights(format!("{}: {e}", dir.join(f).display())))
    };
    load_model(&read("config.json")?, &read("model.bin")?, device)
}

/// Write `bytes` to `path` atomically: a temporary file in the same folder, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Res<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("out"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(())
}

/// LoRA adapters for `net` from `lora.json` (a [`LoraConfig`]) and `lora.bin` contents.
pub fn load_lora<B: Backend>(
    net: &UNet<B>,
    lora_json: &[u8],
    lora_bin: &[u8],
    device: &B::Device,
) -> Res<(UNetLora<B>, LoraConfig)> {
    let cfg: LoraConfig = serde_json::from_slice(lora_json)
        .map_err(|e| Error::BadWeights(format!("lora.json: {e}")))?;
    if cfg.rank == 0 || cfg.rank > 256 {
        return Err(Error::BadWeights(format!(
            "lora.json: rank {} is not in 1..=256",
            cfg.rank
        )));
    }
    let lora = module_from_bytes(cfg.init(net, device), lora_bin, device)?;
    Ok((lora, cfg))
}

/// `dir/lora.json` + `dir/lora.bin` when `dir` has an adapter; `None` when it has neither file.
pub fn load_lora_dir<B: Backend>(
    net: &UNet<B>,
    dir: &Path,
    device: &B::Device,
) -> Res<Option<(UNetLora<B>, LoraConfig)>> {
    let (j, b) = (dir.join("lora.json"), dir.join("lora.bin"));
    if !j.exists() && !b.exists() {
        return Ok(None);
    }
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| Error::BadWeights(format!("{}: {e}", p.display())));
    load_lora(net, &read(&j)?, &read(&b)?, device).map(Some)
}

/// Save `dir/lora.json` + `dir/lora.bin` (each written atomically).
pub fn save_lora<B: Backend>(lora: &UNetLora<B>, cfg: &LoraConfig, dir: &Path) -> Res<()> {
    save_lora_as(lora, cfg, dir, Precision::Full)
}

/// [`save_lora`] with `lora.bin`'s floats in `precision`.
pub fn save_lora_as<B: Backend>(
    lora: &UNetLora<B>,
    cfg: &LoraConfig,
    dir: &Path,
    precision: Precision,
) -> Res<()> {
    let bin = module_to_bytes_as(lora.clone(), precision)?;
    std::fs::create_dir_all(dir)?;
    write_atomic(&dir.join("lora.json"), cfg.to_json_string().as_bytes())?;
    write_atomic(&dir.join("lora.bin"), &bin)
}

/// Save `dir/config.json` + `dir/model.bin` (each written atomically).
pub fn save_dir<B: Backend>(net: &UNet<B>, cfg: &ModelConfig, dir: &Path) -> Res<()> {
    save_dir_as(net, cfg, dir, Precision::Full)
}

/// [`save_dir`] with `model.bin`'s floats in `precision`.
pub fn save_dir_as<B: Backend>(
    net: &UNet<B>,
    cfg: &ModelConfig,
    dir: &Path,
    precision: Precision,
) -> Res<()> {
    // Encode first: a network out of f16's range leaves no folder behind.
    let bin = module_to_bytes_as(net.clone(), precision)?;
    std::fs::create_dir_all(dir)?;
    write_atomic(&dir.join("config.json"), cfg.to_json().as_bytes())?;
    write_atomic(&dir.join("model.bin"), &bin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn cfg() -> ModelConfig {
        ModelConfig::new(UNetConfig::tiny(), BridgeConfig::new())
    }

    #[test]
    fn round_trip_bytes() {
        let dev = Default::default();
        let net = cfg().unet.init::<Flex>(&dev);
        let bytes = module_to_bytes(net.clone());
        let (back, c) = load_model::<Flex>(cfg().to_json().as_bytes(), &bytes, &dev).unwrap();
        assert_eq!(c.unet.widths, vec![8, 16]);
        assert_eq!(shapes::<Flex, _>(&back), shapes::<Flex, _>(&net));
        assert_eq!(module_to_bytes(back), bytes);
    }

    #[test]
    fn half_precision_round_trips_to_f16_rounding() {
        let dev = Default::default();
        let net = materialize(cfg().unet.init::<Flex>(&dev));
        let full = module_to_bytes(net.clone());
        let half = module_to_bytes_as(net.clone(), Precision::Half).unwrap();
        assert_eq!(payload(&half).unwrap().0, Precision::Half);
        assert_eq!(payload(&full).unwrap().0, Precision::Full);
        assert!(
            half.len() * 10 < full.len() * 6,
            "f16 file {} bytes against {} in f32",
            half.len(),
            full.len()
        );
        let (back, _) = load_model::<Flex>(cfg().to_json().as_bytes(), &half, &dev).unwrap();
        // Every parameter within f16's rounding: half an ulp, 2^-11 relative (subnormals absolute).
        let flat = |m: &UNet<Flex>| {
            struct All(Vec<f32>);
            impl ModuleVisitor<Flex> for All {
                fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Flex, D>>) {
                    self.0.extend(p.val().into_data().to_vec::<f32>().unwrap());
                }
            }
            let mut a = All(Vec::new());
            m.visit(&mut a);
            a.0
        };
        let (a, b) = (flat(&net), flat(&back));
        assert_eq!(a.len(), b.len());
        assert!(
            a.iter().any(|x| x.abs() > 1e-2),
            "the test net must have weights"
        );
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= x.abs() / 2048.0 + 6e-8,
                "{x} came back as {y}"
            );
        }
        assert!(
            a.iter().zip(&b).any(|(x, y)| x != y),
            "the floats were rounded"
        );
        // Written again in half precision, the same bytes.
        assert_eq!(module_to_bytes_as(back, Precision::Half).unwrap(), half);
        // A flipped byte in a half-precision file is caught like in a full one.
        let mut flipped = half.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let e = load_model::<Flex>(cfg().to_json().as_bytes(), &flipped, &dev).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
    }

    #[test]
    fn weights_beyond_f16_range_are_refused() {
        struct Scale;
        impl burn::module::ModuleMapper<Flex> for Scale {
            fn map_float<const D: usize>(
                &mut self,
                p: Param<Tensor<Flex, D>>,
            ) -> Param<Tensor<Flex, D>> {
                p.map(|t| t * 1e7)
            }
        }
        let dev = Default::default();
        let net = materialize(cfg().unet.init::<Flex>(&dev)).map(&mut Scale);
        assert!(max_abs(&net) > 65504.0);
        let e = module_to_bytes_as(net.clone(), Precision::Half).unwrap_err();
        assert!(e.to_string().contains("f16's range"), "{e}");
        let dir = std::env::temp_dir().join(format!("fmsr-half-{}", std::process::id()));
        assert!(save_dir_as(&net, &cfg(), &dir, Precision::Half).is_err());
        assert!(!dir.exists(), "nothing written for a refused network");
        // Full precision keeps them.
        assert!(module_to_bytes_as(net, Precision::Full).is_ok());
    }

    #[test]
    fn bad_files_are_errors() {
        let dev = burn::backend::flex::FlexDevice;
        let good = module_to_bytes(cfg().unet.init::<Flex>(&dev));
        let json = cfg().to_json();
        let load = |j: &[u8], b: &[u8]| {
            load_model::<Flex>(j, b, &dev)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        assert!(load(json.as_bytes(), b"hello").contains("bad header"));
        assert!(load(json.as_bytes(), &good[..good.len() - 3]).contains("truncated"));
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(load(json.as_bytes(), &flipped).contains("checksum"));
        assert!(load(b"{not json", &good).contains("config.json"));
        // A valid file for another architecture.
        let other = ModelConfig::new(
            UNetConfig::new(
                vec![4, 8],
                vec![1, 1],
                crate::cond::CondConfig::new().with_dim(16).with_octaves(3),
            ),
            BridgeConfig::new(),
        );
        let e = load(other.to_json().as_bytes(), &good);
        assert!(
            e.contains("architecture") || e.contains("shapes") || e.contains("record"),
            "{e}"
        );
    }

    #[test]
    fn lora_files_round_trip_and_bad_ones_are_errors() {
        let dev = burn::backend::flex::FlexDevice;
        let net = cfg().unet.init::<Flex>(&dev);
        let lcfg = LoraConfig::new().with_rank(2);
        let mut lora = lcfg.init(&net, &dev);
        lora.randomize(0.1, 4, &dev);
        let tmp = std::env::temp_dir().join(format!("fmsr-lora-{}", std::process::id()));
        assert!(load_lora_dir(&net, &tmp, &dev).unwrap().is_none());
        save_lora(&lora, &lcfg, &tmp).unwrap();
        let (back, c) = load_lora_dir(&net, &tmp, &dev).unwrap().unwrap();
        assert_eq!(c, lcfg);
        let x = Tensor::<Flex, 4>::ones([1, 12, 8, 8], &dev) * 0.3;
        let cond = crate::cond::Cond::uniform(1, 0.0, 1.0, &dev);
        let v = |l: &UNetLora<Flex>| {
            net.velocity_lora(x.clone(), x.clone(), &cond, Some((l, 1.0)))
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        let (a, b) = (v(&lora), v(&back));
        assert_eq!(a, b);
        let plain = net
            .velocity(x.clone(), x.clone(), &cond)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert_ne!(a, plain, "the randomised adapter must act");
        // An adapter of another rank, a corrupt file, a missing half.
        let bin = std::fs::read(tmp.join("lora.bin")).unwrap();
        let e = load_lora(&net, br#"{"rank": 3}"#, &bin, &dev).unwrap_err();
        assert!(matches!(e, Error::BadWeights(_)), "{e}");
        let e = load_lora(&net, br#"{"rank": 2}"#, &bin[..bin.len() / 2], &dev).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        std::fs::remove_file(tmp.join("lora.json")).unwrap();
        let e = load_lora_dir(&net, &tmp, &dev).unwrap_err();
        assert!(e.to_string().contains("lora.json"), "{e}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
