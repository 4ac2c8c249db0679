//! The straight line the guided search and the memory model fit through measured peaks.

/// A straight line through two measured `(batch_size, peak_bytes)` points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    /// The smaller batch size's point.
    pub from: (usize, u64),
    /// The larger batch size's point.
    pub to: (usize, u64),
    /// Bytes per sample between them.
    pub slope: f64,
}

impl Line {
    /// The line through the largest point and the largest one at most half its batch size
    /// (or the smallest), so that it spans enough of the curve for noise not to tilt it.
    /// `None` without two distinct batch sizes.
    pub fn spanning(mut points: Vec<(usize, u64)>) -> Option<Line> {
        points.sort_unstable();
        points.dedup_by_key(|p| p.0);
        let &to = points.last()?;
        let &from = points
            .iter()
            .rev()
            .find(|(b, _)| 2 * b <= to.0)
            .or_else(|| points.first().filter(|(b, _)| *b < to.0))?;
        let slope = (to.1 as f64 - from.1 as f64) / (to.0 - from.0) as f64;
        Some(Line { from, to, slope })
    }

    /// The line through the two largest points (the local slope at the top). `None`
    /// without two distinct batch sizes.
    pub fn through_largest(mut points: Vec<(usize, u64)>) -> Option<Line> {
        points.sort_unstable();
        points.dedup_by_key(|p| p.0);
        let [.., from, to] = points[..] else {
            return None;
        };
        let slope = (to.1 as f64 - from.1 as f64) / (to.0 - from.0) as f64;
        Some(Line { from, to, slope })
    }

    /// The line's bytes at batch size 0.
    pub fn fixed(&self) -> f64 {
        self.to.1 as f64 - self.slope * self.to.0 as f64
    }

    /// The line's bytes at `batch_size`.
    pub fn at(&self, batch_size: usize) -> f64 {
        self.fixed() + self.slope * batch_size as f64
    }
}
