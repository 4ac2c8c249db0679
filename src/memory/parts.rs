//! Where a CPU trial's forward pass holds its bytes: the built-in models call [`mark`] after
//! each part of the forward pass (the inputs, the embeddings, the blocks, the logits and the
//! loss), and a trial that records ([`record`]) gets the counted heap at each mark. The
//! bytes between two marks are what that part keeps alive for the backward pass; their
//! growth from one batch size to another is that part's bytes per sample (see
//! docs/design.md, "Where the bytes per sample go").
//!
//! The marks live in a fixed array, never on the heap: recording must not change the peak
//! it records, nor make one step's peak differ from the next.

use std::cell::RefCell;

use super::counting::CountingAllocator;

/// The most marks one recording keeps ("start" and a built-in model's five parts fit).
const ROOM: usize = 16;

struct Marks {
    recording: bool,
    len: usize,
    items: [(&'static str, u64); ROOM],
}

thread_local! {
    static MARKS: RefCell<Marks> = const {
        RefCell::new(Marks { recording: false, len: 0, items: [("", 0); ROOM] })
    };
}

/// Starts recording this thread's marks afresh, with a first one, "start", at the bytes
/// counted now.
pub fn record() {
    MARKS.with(|m| {
        let mut m = m.borrow_mut();
        m.recording = true;
        m.len = 1;
        m.items[0] = ("start", CountingAllocator::current_bytes());
    });
}

/// Stops recording; the marks are kept for [`take`].
pub fn pause() {
    MARKS.with(|m| m.borrow_mut().recording = false);
}

/// Stops recording and returns the marks: "start", then each part's name and the counted
/// heap bytes when it was done, in order; empty when nothing was recorded.
pub fn take() -> Vec<(&'static str, u64)> {
    MARKS.with(|m| {
        let mut m = m.borrow_mut();
        m.recording = false;
        let marks = m.items[..m.len].to_vec();
        m.len = 0;
        marks
    })
}

/// The part of the forward pass named `part` is done: records the counted heap bytes when
/// this thread is recording (and there is room), else does nothing.
pub fn mark(part: &'static str) {
    MARKS.with(|m| {
        let mut m = m.borrow_mut();
        if m.recording && m.len < ROOM {
            let at = m.len;
            m.items[at] = (part, CountingAllocator::current_bytes());
            m.len += 1;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_kept_only_while_recording_and_never_past_the_room() {
        mark("ignored");
        assert!(take().is_empty());
        record();
        mark("a");
        pause();
        mark("b");
        let names: Vec<&str> = take().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["start", "a"]);
        assert!(take().is_empty());
        record();
        for _ in 0..2 * ROOM {
            mark("x");
        }
        assert_eq!(take().len(), ROOM);
    }
}
