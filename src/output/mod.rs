//! What the command line prints: the values a command assembles once from what the library
//! returned ([`answer`]), each as JSON (serde) or text, and the SVG chart. Nothing here
//! measures or decides.

pub mod answer;
pub mod estimate;
mod memory;
pub mod plot;
pub mod report;
mod schedule;
pub mod tables;
pub mod verification;

/// A batch size, or "none" where there is none (no size leaves the margin free).
pub fn size_or_none(size: Option<usize>) -> String {
    size.map_or_else(|| "none".to_string(), |b| b.to_string())
}
