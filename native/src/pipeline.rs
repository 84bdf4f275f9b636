//! The staged training pipeline (docs/algorithm.md §1-5) from one config: a training config with a
//! `stages` list, each stage a named patch merged over the rest of the file, e.g.
//!   diagonal warm-start (flow-matching) -> self-distillation (shortcut) -> guidance
//!   (shortcut + `guidance`) -> adversarial LoRA (`adversarial`).
//! Stage k trains in OUT/NAME, starting from stage k-1's `final/` (the first from `--init`, or
//! from scratch); each stage is an ordinary resumable run, and a finished one leaves `DONE`, so
//! `train --resume` on the pipeline continues where it stopped. `--stage NAME` runs one stage
//! (from the previous stage's `final/`, or from `--init DIR` when given).
//! A stage's `stop_after` ends it at that step of its schedule (a run stopped before its cosine
//! reached the end, as configs/release.json records).

use crate::train::{TrainArgs, TrainConfig};
use anyhow::{bail, Context, Result};
use serde_json::Value;

/// RFC 7386 merge patch: objects merge key by key, `null` removes, anything else replaces.
pub fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// One stage: its name, its full training config, and where it stops.
pub struct Stage {
    pub name: String,
    pub cfg: TrainConfig,
    /// The step it ends at: `stop_after`, or the end of its schedule.
    pub end: usize,
}

/// The stages of a pipeline config.
pub fn stages(file: &Value) -> Result<Vec<Stage>> {
    let list = file
        .get("stages")
        .and_then(Value::as_array)
        .context("a pipeline config needs a `stages` list")?;
    let mut base = file.clone();
    base.as_object_mut()
        .expect("checked above")
        .remove("stages");
    let mut out: Vec<Stage> = Vec::new();
    for (i, st) in list.iter().enumerate() {
        let name = st
            .get("name")
            .and_then(Value::as_str)
            .with_context(|| format!("stage {i} needs a `name`"))?
            .to_string();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            || out.iter().any(|s| s.name == name)
        {
            bail!("stage names must be unique and made of letters, digits, - and _: '{name}'");
        }
        let mut patch = st.clone();
        let fields = patch.as_object_mut().expect("has a name");
        fields.remove("name");
        let stop = match fields.remove("stop_after") {
            None => None,
            Some(v) => Some(v.as_u64().filter(|s| *s > 0).with_context(|| {
                format!("stage '{name}': stop_after must be a positive number of steps")
            })? as usize),
        };
        let mut cfg = base.clone();
        merge(&mut cfg, &patch);
        let cfg: TrainConfig = serde_json::from_value(cfg)
            .with_context(|| format!("stage '{name}': the merged config"))?;
        cfg.check().with_context(|| format!("stage '{name}'"))?;
        if stop.is_some_and(|s| s > cfg.steps) {
            bail!(
                "stage '{name}': stop_after is beyond its {} steps",
                cfg.steps
            );
        }
        let end = stop.unwrap_or(cfg.steps);
        out.push(Stage { name, cfg, end });
    }
    if out.is_empty() {
        bail!("`stages` is empty");
    }
    Ok(out)
}

const DONE: &str = "DONE";

pub fn run(args: &TrainArgs, file: &Value) -> Result<()> {
    if args.objective.is_some() || args.weighting.is_some() {
        bail!("--objective / --weighting do not apply to a pipeline: set them per stage");
    }
    let stages = stages(file)?;
    if let Some(s) = &args.stage {
        if !stages.iter().any(|st| st.name == *s) {
            let names: Vec<&str> = stages.iter().map(|st| st.name.as_str()).collect();
            bail!("no stage '{s}' (stages: {})", names.join(", "));
        }
    }
    let mut prev: Option<std::path::PathBuf> = args.init.clone();
    for Stage { name, mut cfg, end } in stages {
        let out = args.out.join(&name);
        let selected = args.stage.as_deref().is_none_or(|s| s == name);
        if !selected {
            prev = Some(out.join("final"));
            continue;
        }
        if args.resume && out.join(DONE).exists() && args.stage.is_none() {
            tracing::info!("stage '{name}': done, skipped");
            prev = Some(out.join("final"));
            continue;
        }
        if let Some(p) = args.precision {
            cfg.precision = p;
        }
        // `--stage NAME --init DIR` runs that stage from the given weights.
        let from = match (&args.stage, &args.init) {
            (Some(_), Some(dir)) => Some(dir.clone()),
            _ => prev.clone(),
        };
        let init = match &from {
            Some(p) if !p.join("model.bin").exists() => bail!(
                "stage '{name}' starts from {}, which does not exist yet: run the stages before it",
                p.display()
            ),
            p => p.clone(),
        };
        tracing::info!(
            "stage '{name}': {} steps from {}",
            cfg.steps,
            init.as_ref()
                .map_or("scratch".into(), |p| p.display().to_string())
        );
        // --max-steps counts from where the stage is; a stage never runs past its end.
        let done = if args.resume {
            crate::train::latest_step(&out)?
        } else {
            0
        };
        let left = end.saturating_sub(done);
        let stage_args = TrainArgs {
            out: out.clone(),
            init,
            // The discriminator given on the command line is for the adversarial stages.
            init_critic: args
                .init_critic
                .clone()
                .filter(|_| cfg.adversarial.is_some()),
            stage: None,
            max_steps: Some(args.max_steps.map_or(left, |m| m.min(left))),
            ..args.clone()
        };
        crate::train::run_config(&stage_args, cfg.clone())?;
        let state = crate::train::latest_step(&out)?;
        if state < end {
            tracing::info!("stage '{name}' stopped at step {state} of {end}");
            return Ok(());
        }
        std::fs::write(out.join(DONE), format!("{state}\n"))?;
        prev = Some(out.join("final"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch() {
        let mut a = json!({"a": 1, "m": {"x": 1, "y": 2}, "g": {"w": 2}});
        merge(&mut a, &json!({"m": {"y": 3, "z": 4}, "g": null, "b": [1]}));
        assert_eq!(a, json!({"a": 1, "m": {"x": 1, "y": 3, "z": 4}, "b": [1]}));
    }
}
