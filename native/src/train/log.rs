//! The training log: running means of the named loss terms between log lines, and the time per
//! step, for every trainer.

use std::time::Instant;

pub struct StepLog {
    acc: Vec<(&'static str, f64)>,
    n: usize,
    since: Instant,
}

impl Default for StepLog {
    fn default() -> Self {
        Self {
            acc: Vec::new(),
            n: 0,
            since: Instant::now(),
        }
    }
}

impl StepLog {
    pub fn add(&mut self, name: &'static str, v: f64) {
        match self.acc.iter_mut().find(|(k, _)| *k == name) {
            Some(e) => e.1 += v,
            None => self.acc.push((name, v)),
        }
    }

    /// One training step is done.
    pub fn step(&mut self) {
        self.n += 1;
    }

    /// The means since the last line ("name value ...") and the seconds per step; starts over.
    pub fn take(&mut self) -> (String, f64) {
        let n = self.n.max(1) as f64;
        let terms: Vec<String> = self
            .acc
            .iter()
            .map(|(k, v)| format!("{k} {:.5}", v / n))
            .collect();
        let secs = self.since.elapsed().as_secs_f64() / n;
        *self = Self::default();
        (terms.join(" "), secs)
    }
}
