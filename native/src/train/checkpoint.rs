//! A run folder's checkpoints, for every trainer (flow map and adversarial): `OUT/ckpt-STEP/`
//! holds the files the trainer names (weights, optimiser records) and `state.json`; `OUT/latest`
//! names the newest. A checkpoint is written whole beside the last one and only then published,
//! so a kill at any moment leaves one whole checkpoint to resume from.

use crate::train::TrainArgs;
use anyhow::{Context, Result};
use flowmapsr_core::weights::write_atomic;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file in the run folder that names the latest checkpoint.
pub const LATEST: &str = "latest";

/// Persistent state beside a checkpoint's weights.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunState {
    pub step: usize,
    /// The best validation PSNR-Y so far: none before the first validation (and in runs that
    /// keep no best/).
    #[serde(default)]
    pub best_psnr: Option<f64>,
    /// A whole-network adversarial run's best validation GMSD so far (its best/ is kept by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_gmsd: Option<f64>,
    /// The guidance w that `best_gmsd` was validated at: a resume at another w starts best/ anew
    /// (none in checkpoints from before the knob, which validated at w 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_gmsd_w: Option<f64>,
    pub train_secs: f64,
    pub history: Vec<ValPoint>,
    /// The step at which the generator's optimiser started fresh on a resume from a packed
    /// checkpoint (`flowmapsr pack` leaves it out): the learning rate warms up again from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adam_from: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ValPoint {
    pub step: usize,
    pub psnr_y: f64,
    pub train_secs: f64,
    /// Adversarial runs also log GMSD, the HF ratio and the pattern ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gmsd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<f64>,
}

impl RunState {
    /// Whether a validation GMSD at guidance `w` is a new best. GMSD at one w says nothing of
    /// another (w is a network input), so a best kept at another w never stands.
    pub fn improves_gmsd(&self, gmsd: f64, w: f64) -> bool {
        match (self.best_gmsd, self.best_gmsd_w.unwrap_or(1.0)) {
            (Some(b), bw) if bw == w => gmsd < b,
            _ => true,
        }
    }

    /// Records a validation GMSD at `w` if it is a new best (the GMSD and its w together);
    /// returns whether it was.
    pub fn record_gmsd(&mut self, gmsd: f64, w: f64) -> bool {
        let best = self.improves_gmsd(gmsd, w);
        if best {
            (self.best_gmsd, self.best_gmsd_w) = (Some(gmsd), Some(w));
        }
        best
    }
}

/// One published checkpoint.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: RunState,
}

impl Checkpoint {
    /// The run folder's latest checkpoint, if it has one.
    pub fn latest(out: &Path) -> Result<Option<Self>> {
        let Ok(name) = std::fs::read_to_string(out.join(LATEST)) else {
            return Ok(None);
        };
        let dir = out.join(name.trim());
        let state = serde_json::from_slice(&read_in(&dir, "state.json")?)
            .with_context(|| format!("{}", dir.join("state.json").display()))?;
        Ok(Some(Self { dir, state }))
    }

    /// With `--resume`, the checkpoint to continue from (said in the log); none on a fresh run,
    /// or when the run folder has none yet (then the run starts fresh, with a warning).
    pub fn resume(args: &TrainArgs, log: bool) -> Result<Option<Self>> {
        if !args.resume {
            return Ok(None);
        }
        let ck = Self::latest(&args.out)?;
        if log {
            match &ck {
                Some(c) => {
                    tracing::info!("resuming from {} at step {}", c.dir.display(), c.state.step)
                }
                None => tracing::warn!(
                    "--resume: no checkpoint in {}, starting fresh",
                    args.out.display()
                ),
            }
        }
        Ok(ck)
    }

    /// The bytes of one of its files, the path named in the error.
    pub fn read(&self, file: &str) -> Result<Vec<u8>> {
        read_in(&self.dir, file)
    }

    pub fn has(&self, file: &str) -> bool {
        self.dir.join(file).exists()
    }

    /// Writes `files` and `state` as `OUT/ckpt-STEP` in a temporary folder, renames it into
    /// place, points `latest` at it (atomically) and only then removes the previous checkpoint.
    pub fn save(out: &Path, state: &RunState, files: &[(&str, Vec<u8>)]) -> Result<()> {
        let name = format!("ckpt-{:08}", state.step);
        let tmp = out.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        for (f, bytes) in files {
            std::fs::write(tmp.join(f), bytes)?;
        }
        std::fs::write(tmp.join("state.json"), serde_json::to_vec_pretty(state)?)?;
        let dst = out.join(&name);
        let _ = std::fs::remove_dir_all(&dst);
        std::fs::rename(&tmp, &dst)?;
        let prev = std::fs::read_to_string(out.join(LATEST)).ok();
        write_atomic(&out.join(LATEST), name.as_bytes())?;
        if let Some(p) = prev.filter(|p| p.trim() != name) {
            let _ = std::fs::remove_dir_all(out.join(p.trim()));
        }
        Ok(())
    }
}

/// The step of the run folder's latest checkpoint (0 without one).
pub fn latest_step(out: &Path) -> Result<usize> {
    Ok(Checkpoint::latest(out)?.map_or(0, |c| c.state.step))
}

pub(crate) fn read_in(dir: &Path, f: &str) -> Result<Vec<u8>> {
    std::fs::read(dir.join(f)).with_context(|| format!("reading {}", dir.join(f).display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint written before the first validation has no best PSNR; it must load (it was
    /// once written as `null` into an f64 and could not be resumed).
    #[test]
    fn state_without_a_validation_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = RunState {
            step: 3,
            ..Default::default()
        };
        Checkpoint::save(dir.path(), &state, &[("a.bin", vec![1, 2])]).unwrap();
        let c = Checkpoint::latest(dir.path()).unwrap().unwrap();
        assert_eq!((c.state.step, c.state.best_psnr), (3, None));
        assert_eq!(c.read("a.bin").unwrap(), vec![1, 2]);
        let old = r#"{"step":5,"best_psnr":null,"train_secs":1.0,"history":[]}"#;
        let s: RunState = serde_json::from_str(old).unwrap();
        assert_eq!(s.best_psnr, None);
        // The next checkpoint replaces it whole.
        let next = RunState {
            step: 4,
            best_psnr: Some(30.0),
            ..state
        };
        Checkpoint::save(dir.path(), &next, &[("a.bin", vec![3])]).unwrap();
        let c = Checkpoint::latest(dir.path()).unwrap().unwrap();
        assert_eq!((c.state.step, c.state.best_psnr), (4, Some(30.0)));
        assert!(!dir.path().join("ckpt-00000003").exists());
        assert_eq!(latest_step(dir.path()).unwrap(), 4);
    }

    /// best/ compares GMSD only at one w; a state from before the knob counts as w 1.
    #[test]
    fn best_gmsd_is_kept_per_guidance() {
        let old: RunState =
            serde_json::from_str(r#"{"step":5,"best_gmsd":0.08,"train_secs":1.0,"history":[]}"#)
                .unwrap();
        assert!(!old.improves_gmsd(0.09, 1.0));
        assert!(old.improves_gmsd(0.07, 1.0));
        assert!(old.improves_gmsd(0.09, 2.0));
        let at2 = RunState {
            best_gmsd_w: Some(2.0),
            ..old
        };
        assert!(!at2.improves_gmsd(0.09, 2.0));
        assert!(at2.improves_gmsd(0.09, 2.1));
        assert!(RunState::default().improves_gmsd(1.0, 1.0));
        // Recording keeps the GMSD with its w.
        let mut s = RunState::default();
        assert!(s.record_gmsd(0.08, 2.0));
        assert!(!s.record_gmsd(0.09, 2.0));
        assert_eq!((s.best_gmsd, s.best_gmsd_w), (Some(0.08), Some(2.0)));
        assert!(s.record_gmsd(0.09, 2.1));
        assert_eq!((s.best_gmsd, s.best_gmsd_w), (Some(0.09), Some(2.1)));
    }
}
