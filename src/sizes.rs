//! [`Sizes`]: the three batch sizes every answer gives, measured (a search, a what-if row, a
//! sweep's length, several devices' minimum) or predicted (a plan, the estimate).
//!
//! One type, and the two spellings its JSON keeps: a measured answer's `max_batch_size`,
//! `largest_power_of_two`, `recommended_batch_size` ([`measured_keys`], [`maybe_measured_keys`])
//! and a prediction's `predicted_max`, `predicted_power_of_two`, `predicted_recommended`
//! ([`predicted_keys`]).

/// The largest batch size, the largest power of two at most it, and the recommended size
/// (the largest that leaves the margin free).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sizes {
    /// The largest batch size (0: none).
    pub max: usize,
    /// The largest power of two at most `max` (0: none).
    pub power_of_two: usize,
    /// The largest size that leaves the margin free (`None`: no size does).
    pub recommended: Option<usize>,
}

impl Sizes {
    /// The smallest of each size over `all`: what every one of them allows (one replica per
    /// device in a data-parallel run). `None` when `all` is empty.
    pub fn minimum(all: impl IntoIterator<Item = Sizes>) -> Option<Sizes> {
        all.into_iter().reduce(|a, b| Sizes {
            max: a.max.min(b.max),
            power_of_two: a.power_of_two.min(b.power_of_two),
            recommended: a.recommended.zip(b.recommended).map(|(x, y)| x.min(y)),
        })
    }
}

/// `Sizes` as a measured answer's keys, flattened into its container:
/// `#[serde(flatten, with = "crate::sizes::measured_keys")]`.
pub mod measured_keys {
    use super::Sizes;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Keys {
        max_batch_size: usize,
        largest_power_of_two: usize,
        recommended_batch_size: Option<usize>,
    }

    /// Writes the keys.
    pub fn serialize<S: Serializer>(sizes: &Sizes, serializer: S) -> Result<S::Ok, S::Error> {
        Keys {
            max_batch_size: sizes.max,
            largest_power_of_two: sizes.power_of_two,
            recommended_batch_size: sizes.recommended,
        }
        .serialize(serializer)
    }

    /// Reads the keys.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Sizes, D::Error> {
        let keys = Keys::deserialize(deserializer)?;
        Ok(Sizes {
            max: keys.max_batch_size,
            power_of_two: keys.largest_power_of_two,
            recommended: keys.recommended_batch_size,
        })
    }
}

/// `Option<Sizes>` as a measured answer's keys, each `null` when there is no answer (a
/// what-if change whose search gave none).
pub mod maybe_measured_keys {
    use super::Sizes;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Keys {
        max_batch_size: Option<usize>,
        largest_power_of_two: Option<usize>,
        recommended_batch_size: Option<usize>,
    }

    /// Writes the keys.
    pub fn serialize<S: Serializer>(
        sizes: &Option<Sizes>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        Keys {
            max_batch_size: sizes.map(|s| s.max),
            largest_power_of_two: sizes.map(|s| s.power_of_two),
            recommended_batch_size: sizes.and_then(|s| s.recommended),
        }
        .serialize(serializer)
    }

    /// Reads the keys.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Sizes>, D::Error> {
        let keys = Keys::deserialize(deserializer)?;
        Ok(keys.max_batch_size.map(|max| Sizes {
            max,
            power_of_two: keys.largest_power_of_two.unwrap_or(0),
            recommended: keys.recommended_batch_size,
        }))
    }
}

/// `Sizes` as a prediction's keys (`predicted_recommended` 0 when no size leaves the margin).
pub mod predicted_keys {
    use super::Sizes;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Keys {
        predicted_max: usize,
        predicted_power_of_two: usize,
        predicted_recommended: usize,
    }

    /// Writes the keys.
    pub fn serialize<S: Serializer>(sizes: &Sizes, serializer: S) -> Result<S::Ok, S::Error> {
        Keys {
            predicted_max: sizes.max,
            predicted_power_of_two: sizes.power_of_two,
            predicted_recommended: sizes.recommended.unwrap_or(0),
        }
        .serialize(serializer)
    }

    /// Reads the keys.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Sizes, D::Error> {
        let keys = Keys::deserialize(deserializer)?;
        Ok(Sizes {
            max: keys.predicted_max,
            power_of_two: keys.predicted_power_of_two,
            recommended: (keys.predicted_recommended > 0).then_some(keys.predicted_recommended),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Measured {
        #[serde(flatten, with = "measured_keys")]
        sizes: Sizes,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Predicted {
        #[serde(flatten, with = "predicted_keys")]
        sizes: Sizes,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Maybe {
        #[serde(flatten, with = "maybe_measured_keys")]
        sizes: Option<Sizes>,
    }

    #[test]
    fn each_spelling_keeps_its_keys_and_comes_back() {
        let sizes = Sizes {
            max: 19,
            power_of_two: 16,
            recommended: Some(18),
        };
        let measured = serde_json::to_value(Measured { sizes }).unwrap();
        assert_eq!(
            measured,
            serde_json::json!({"max_batch_size": 19, "largest_power_of_two": 16,
                               "recommended_batch_size": 18})
        );
        let predicted = serde_json::to_value(Predicted { sizes }).unwrap();
        assert_eq!(predicted["predicted_recommended"], 18);
        let none = serde_json::to_value(Maybe { sizes: None }).unwrap();
        assert_eq!(none["max_batch_size"], serde_json::Value::Null);
        for text in [measured.to_string(), predicted.to_string()] {
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(back.is_object());
        }
        let back: Measured = serde_json::from_value(measured).unwrap();
        assert_eq!(back.sizes, sizes);
    }

    #[test]
    fn the_minimum_is_taken_size_by_size() {
        let a = Sizes {
            max: 9,
            power_of_two: 8,
            recommended: Some(8),
        };
        let b = Sizes {
            max: 7,
            power_of_two: 4,
            recommended: None,
        };
        assert_eq!(
            Sizes::minimum([a, b]),
            Some(Sizes {
                max: 7,
                power_of_two: 4,
                recommended: None
            })
        );
        assert_eq!(Sizes::minimum([]), None);
    }
}
