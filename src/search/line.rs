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
    pub fn spanning(points: Vec<(usize, u64)>) -> Option<Line> {
        let points = by_size(points);
        let &to = points.last()?;
        let &from = points
            .iter()
            .rev()
            .find(|(b, _)| 2 * b <= to.0)
            .or_else(|| points.first().filter(|(b, _)| *b < to.0))?;
        Some(Line::between(from, to))
    }

    /// The line through the two largest points (the local slope at the top). `None`
    /// without two distinct batch sizes.
    pub fn through_largest(points: Vec<(usize, u64)>) -> Option<Line> {
        let [.., from, to] = by_size(points)[..] else {
            return None;
        };
        Some(Line::between(from, to))
    }

    /// The line through two points of different batch sizes, `from` the smaller.
    fn between(from: (usize, u64), to: (usize, u64)) -> Line {
        let slope = (to.1 as f64 - from.1 as f64) / (to.0 - from.0) as f64;
        Line { from, to, slope }
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

/// `points` in batch-size order, one per batch size.
pub(crate) fn by_size(mut points: Vec<(usize, u64)>) -> Vec<(usize, u64)> {
    points.sort_unstable();
    points.dedup_by_key(|p| p.0);
    points
}
