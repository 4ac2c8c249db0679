//! A device measured by sampling how much of it is in use (a CUDA device without memory
//! pools: `cuMemGetInfo` at each phase boundary), with the peak and the capacity counted from
//! one reference so that they compare like for like.
//!
//! What the device has in use includes what no trial can give back: the CUDA context, other
//! processes. The reference is what was in use when the meter was made, before the model:
//! a trial's bytes are what is in use above it, and the capacity is the device's total above
//! it (or the budget, when smaller). A trial then fits exactly when the device never filled
//! up, and what the warm-up step added outside any tensor (kernels, library workspaces)
//! counts against trials as it does in training. Peaks are approximate: a spike between two
//! samples is missed.

/// The reference a sampled device is measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampledUse {
    /// Bytes in use on the device when the meter was made.
    pub reference: u64,
}

impl SampledUse {
    /// The bytes counted for a trial when the device has `used` bytes in use.
    pub fn counted(&self, used: u64) -> u64 {
        used.saturating_sub(self.reference)
    }

    /// The capacity of a device of `total` bytes, within `budget` when one is given.
    pub fn capacity(&self, total: u64, budget: Option<u64>) -> u64 {
        let room = total.saturating_sub(self.reference);
        budget.map_or(room, |b| b.min(room))
    }

    /// What the device holds that the meter does not count (the context at start, other
    /// processes).
    pub fn outside(&self) -> u64 {
        self.reference
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// A fake 80 GiB device: 1 GiB in use at start (a context, another process), then the
    /// model's 2 GiB and the warm-up step's 0.5 GiB of kernels and workspaces.
    #[test]
    fn a_trial_fits_exactly_when_the_device_does_not_fill_up() {
        let device = SampledUse { reference: GIB };
        let total = 80 * GIB;
        let capacity = device.capacity(total, None);
        assert_eq!(capacity, 79 * GIB);
        // Everything in use, the context and the model included: at the device's total the
        // trial's count is exactly the capacity; a byte more and it is over.
        assert_eq!(device.counted(total), capacity);
        assert!(device.counted(total + 1) > capacity);
        // With the model and the warm-up's workspaces held, a trial whose activations fill
        // the rest of the device still fits: nothing is counted twice.
        let held = GIB + 2 * GIB + GIB / 2;
        let activations = total - held;
        assert_eq!(device.counted(held + activations), capacity);
        // A budget below the room is the capacity.
        assert_eq!(device.capacity(total, Some(40 * GIB)), 40 * GIB);
        assert_eq!(device.capacity(total, Some(90 * GIB)), 79 * GIB);
        assert_eq!(device.outside(), GIB);
    }
}
