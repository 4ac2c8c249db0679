//! LoRA fine-tuning (`--lora-rank`): a low-rank adapter beside each targeted linear layer,
//! `y = x Wᵀ + b + (x Aᵀ) ((alpha / rank) Bᵀ)`, with `A` `[rank, in]` (Kaiming-uniform)
//! and `B` `[out, rank]` (zeros) as in PEFT. The adapters are the only trained variables:
//! [`ParamStore`](super::params::ParamStore) freezes every other tensor by name.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Module, Result, Shape, Tensor};
use candle_nn::{linear_b, Linear, VarBuilder};

use crate::error::{Error, Setting};

/// What `--lora-rank`, `--lora-alpha` and `--lora-targets` ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraOptions {
    /// The adapters' rank (at least 1).
    pub rank: usize,
    /// The scale's numerator: the adapter's output is multiplied by `alpha / rank`.
    pub alpha: u32,
    /// The linear layers that get an adapter, by name or by the last part of it
    /// (`q_proj`, `attn.c_attn`), or `all-linear`; empty: the family's default.
    pub targets: Vec<String>,
}

/// The target that adapts every linear layer of the blocks.
pub const ALL_LINEAR: &str = "all-linear";

/// True when a tensor's name is an adapter's (PEFT's `lora_A`/`lora_B` names).
pub fn is_adapter(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// One block's linear layers: its name in the block (`self_attn.q_proj`), inputs, outputs.
pub type LinearShape = (&'static str, usize, usize);

/// Which linear layers of a family's blocks get adapters, resolved from [`LoraOptions`].
#[derive(Debug, Clone, Default)]
pub struct Adapters {
    rank: usize,
    scale: f64,
    adapted: Vec<&'static str>,
}

impl Adapters {
    /// No adapters: every weight is trained.
    pub fn none() -> Self {
        Self::default()
    }

    /// The adapters `options` asks for on a family whose blocks hold `linears`, with
    /// `default` as the targets when none are named. Refuses a rank of 0 and a target that
    /// names no layer, listing the names there are.
    pub fn resolve(
        options: &LoraOptions,
        linears: &[LinearShape],
        default: &[&str],
    ) -> std::result::Result<Self, Error> {
        if options.rank == 0 {
            return Err(Error::setting(
                Setting::LoraRank,
                0,
                "$LoraRank must be at least 1 (leave it out to train every weight)",
            ));
        }
        let names: Vec<&'static str> = linears.iter().map(|l| l.0).collect();
        let targets: Vec<&str> = if options.targets.is_empty() {
            default.to_vec()
        } else {
            options.targets.iter().map(String::as_str).collect()
        };
        let mut adapted = Vec::new();
        for target in targets {
            let matching: Vec<&'static str> = if target == ALL_LINEAR {
                names.clone()
            } else {
                names
                    .iter()
                    .copied()
                    .filter(|n| *n == target || n.ends_with(&format!(".{target}")))
                    .collect()
            };
            if matching.is_empty() {
                return Err(Error::setting(
                    Setting::LoraTargets,
                    target,
                    format!(
                        "$LoraTargets {target:?} names no linear layer of this model; its \
                         blocks have {}, or use {ALL_LINEAR}",
                        names.join(", ")
                    ),
                ));
            }
            adapted.extend(matching);
        }
        adapted.sort_unstable();
        adapted.dedup();
        Ok(Self {
            rank: options.rank,
            scale: options.alpha as f64 / options.rank as f64,
            adapted,
        })
    }

    /// The adapters' rank (0 without adapters).
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The adapted layers' names in a block.
    pub fn adapted(&self) -> &[&'static str] {
        &self.adapted
    }

    /// The adapters' parameters in one block whose linear layers are `linears`.
    pub fn parameters_per_block(&self, linears: &[LinearShape]) -> u64 {
        linears
            .iter()
            .filter(|(name, ..)| self.adapted.contains(name))
            .map(|&(_, inputs, outputs)| (self.rank * (inputs + outputs)) as u64)
            .sum()
    }

    /// The linear layer `name` of a block (`vb` is the block's), with an adapter when it
    /// is a target.
    pub fn linear(
        &self,
        (name, inputs, outputs): LinearShape,
        bias: bool,
        vb: &VarBuilder,
    ) -> Result<AdaptedLinear> {
        let vb = vb.pp(name);
        let adapter = if self.adapted.contains(&name) {
            let a = vb.pp("lora_A").get_with_hints(
                (self.rank, inputs),
                "weight",
                candle_nn::init::DEFAULT_KAIMING_UNIFORM,
            )?;
            let b = vb.pp("lora_B").get_with_hints(
                (outputs, self.rank),
                "weight",
                candle_nn::Init::Const(0.0),
            )?;
            Some((a, b))
        } else {
            None
        };
        Ok(AdaptedLinear {
            base: linear_b(inputs, outputs, bias, vb)?,
            adapter,
            scale: self.scale,
        })
    }
}

/// `xs Wᵀ` for a frozen (untracked) `weight` `[out, in]` and `xs` `[…, in]`, with no
/// gradient for the weight. candle's backward pass computes a gradient for both inputs of a
/// matmul even when one needs none, and keeps one it never uses until the pass ends: through
/// candle-nn's `Linear` (a 2-D matmul for contiguous input) each frozen weight would hold a
/// gradient the size of itself, so that LoRA would save no gradient memory at all (measured
/// on SmolLM2-135M: 545 MB of frozen weights' gradients kept). [`FrozenMatmul`]'s backward returns the input's gradient only,
/// as PyTorch does for a weight that does not require one (see docs/design.md).
pub fn matmul_frozen_t(xs: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (out, inputs) = weight.dims2()?;
    let mut dims = xs.dims().to_vec();
    let flat = xs
        .reshape(((), inputs))?
        .apply_op2(&weight.t()?, FrozenMatmul)?;
    if let Some(last) = dims.last_mut() {
        *last = out;
    }
    flat.reshape(dims)
}

/// `x [N, in] · wt [in, out]` whose backward pass gives `x` its gradient and the frozen
/// weight none.
struct FrozenMatmul;

impl FrozenMatmul {
    /// candle's `(batch, m, n, k)` for `x [m, k] · wt [k, n]`.
    fn bmnk(x: &Layout, wt: &Layout) -> Result<(usize, usize, usize, usize)> {
        let (m, k) = x.shape().dims2()?;
        let (k2, n) = wt.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("frozen matmul: [{m}, {k}] · [{k2}, {n}]");
        }
        Ok((1, m, n, k))
    }
}

impl CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        wt: &CpuStorage,
        wt_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let bmnk = Self::bmnk(x_layout, wt_layout)?;
        let out = x.matmul(wt, bmnk, x_layout, wt_layout)?;
        Ok((out, Shape::from((bmnk.1, bmnk.2))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        wt: &candle_core::CudaStorage,
        wt_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let bmnk = Self::bmnk(x_layout, wt_layout)?;
        let out = x.matmul(wt, bmnk, x_layout, wt_layout)?;
        Ok((out, Shape::from((bmnk.1, bmnk.2))))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        wt: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(&wt.t()?)?), None))
    }
}

/// A linear layer, with a LoRA adapter when it is a target.
#[derive(Debug)]
pub struct AdaptedLinear {
    base: Linear,
    adapter: Option<(Tensor, Tensor)>,
    scale: f64,
}

impl Module for AdaptedLinear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = match self.base.weight().track_op() {
            true => self.base.forward(xs)?,
            false => {
                let ys = matmul_frozen_t(xs, self.base.weight())?;
                match self.base.bias() {
                    Some(bias) => super::frozen::shift(&ys, bias)?,
                    None => ys,
                }
            }
        };
        match &self.adapter {
            None => Ok(ys),
            Some((a, b)) => {
                // The scale goes on `B` ([out, r]), not on the product: candle keeps every
                // op's inputs, so a scaled product would keep one more [.., out] per token.
                let scaled_b = (b.t()? * self.scale)?;
                ys + xs.broadcast_matmul(&a.t()?)?.broadcast_matmul(&scaled_b)?
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: &[LinearShape] = &[
        ("self_attn.q_proj", 8, 8),
        ("self_attn.v_proj", 8, 4),
        ("mlp.down_proj", 16, 8),
        ("mlp.up_proj", 8, 16),
    ];

    fn options(targets: &[&str]) -> LoraOptions {
        LoraOptions {
            rank: 2,
            alpha: 16,
            targets: targets.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn targets_match_whole_names_or_their_last_part() {
        let default = ["q_proj", "v_proj"];
        let adapters = Adapters::resolve(&options(&[]), BLOCK, &default).unwrap();
        assert_eq!(adapters.adapted(), ["self_attn.q_proj", "self_attn.v_proj"]);
        // 2 × (8 + 8) + 2 × (8 + 4)
        assert_eq!(adapters.parameters_per_block(BLOCK), 56);
        let all = Adapters::resolve(&options(&[ALL_LINEAR]), BLOCK, &default).unwrap();
        assert_eq!(all.adapted().len(), 4);
        let named = Adapters::resolve(&options(&["mlp.up_proj", "up_proj"]), BLOCK, &default);
        assert_eq!(named.unwrap().adapted(), ["mlp.up_proj"]);
    }

    #[test]
    fn a_target_that_names_nothing_or_rank_zero_is_refused() {
        let error = Adapters::resolve(&options(&["proj"]), BLOCK, &[]).unwrap_err();
        assert!(error.to_string().contains("self_attn.q_proj"), "{error}");
        let zero = LoraOptions {
            rank: 0,
            ..options(&[])
        };
        assert!(Adapters::resolve(&zero, BLOCK, &["q_proj"]).is_err());
    }

    #[test]
    fn adapter_names_are_peft_names() {
        assert!(is_adapter("model.layers.0.self_attn.q_proj.lora_A.weight"));
        assert!(is_adapter("h.1.attn.c_attn.lora_B.weight"));
        assert!(!is_adapter("h.1.attn.c_attn.weight"));
    }
}
