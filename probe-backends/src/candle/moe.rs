//! The MLP of a block: dense (gated), or a sparse mixture of experts (Mixtral, Qwen3-MoE)
//! routed as transformers does it: softmax over the router logits in f32, the top-k experts
//! of each token, their weights renormalised to sum to 1 where the architecture says so, and
//! the experts' outputs added in expert order.

use candle_core::{D, DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{Activation, ModelConfig, MoeNames};
use super::layers::Linear;

/// A gated MLP: `down(act(gate(x)) · up(x))`, gate and up as one matmul.
#[derive(Debug, Clone)]
pub(crate) struct GatedMlp {
    /// gate and up stacked (`[2·intermediate, h]`).
    gate_up: Linear,
    down: Linear,
}

impl GatedMlp {
    /// `{p}.{gate}`, `{p}.{up}`, `{p}.{down}` (`intermediate` × `h`).
    fn load(vb: &VarBuilder, p: &str, names: [&str; 3], h: usize, im: usize, bias: bool) -> Result<Self> {
        let gate = Linear::load(vb, &format!("{p}.{}", names[0]), im, h, bias)?;
        let up = Linear::load(vb, &format!("{p}.{}", names[1]), im, h, bias)?;
        Ok(Self {
            gate_up: Linear::fuse(&[gate, up])?,
            down: Linear::load(vb, &format!("{p}.{}", names[2]), h, im, bias)?,
        })
    }

    fn forward(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let gu = self.gate_up.forward(x)?;
        let im = gu.dim(D::Minus1)? / 2;
        let (g, u) = (gu.narrow(D::Minus1, 0, im)?, gu.narrow(D::Minus1, im, im)?);
        self.down.forward(&(act.apply(&g)? * u)?)
    }
}

/// A plain MLP with biases: `down(act(up(x)))` (GPT-2, GPT-NeoX).
#[derive(Debug, Clone)]
pub(crate) struct PlainMlp {
    up: Linear,
    down: Linear,
}

/// A sparse mixture of experts.
#[derive(Debug, Clone)]
pub(crate) struct Moe {
    router: Linear,
    experts: Vec<GatedMlp>,
    top_k: usize,
    renormalise: bool,
}

impl Moe {
    /// Loads the router and experts of block `p` (`layers.N`): one tensor per expert and
    /// projection as published checkpoints (and transformers' `save_pretrained`) store them, or
    /// the fused 3-D `experts.gate_up_proj` / `experts.down_proj` of transformers 5's modules.
    fn load(vb: &VarBuilder, p: &str, cfg: &ModelConfig, names: &MoeNames) -> Result<Self> {
        let moe = cfg.moe.as_ref().expect("a sparse block has a MoE config");
        let (h, im, n) = (cfg.hidden_size, moe.intermediate_size, moe.num_experts);
        let fused = format!("{p}.mlp.experts");
        let experts = if vb.contains_tensor(&format!("{fused}.gate_up_proj")) {
            let gate_up = vb.get((n, 2 * im, h), &format!("{fused}.gate_up_proj"))?;
            let down = vb.get((n, h, im), &format!("{fused}.down_proj"))?;
            (0..n)
                .map(|e| {
                    Ok(GatedMlp {
                        gate_up: Linear { weight: gate_up.get(e)?, bias: None },
                        down: Linear { weight: down.get(e)?, bias: None },
                    })
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            let block = format!("{p}.{}", names.block);
            (0..n)
                .map(|e| GatedMlp::load(vb, &format!("{block}.experts.{e}"), names.expert, h, im, false))
                .collect::<Result<Vec<_>>>()?
        };
        let router_name = if vb.contains_tensor(&format!("{p}.{}.gate.weight", names.block)) {
            format!("{p}.{}.gate", names.block)
        } else {
            format!("{p}.mlp.gate")
        };
        Ok(Self {
            router: Linear::load(vb, &router_name, n, h, false)?,
            experts,
            top_k: moe.top_k,
            renormalise: moe.norm_topk_prob,
        })
    }

    /// `router`: where to keep the router logits (`[b, s, experts]`), when asked.
    fn forward(&self, x: &Tensor, act: Activation, router: Option<&mut Option<Tensor>>) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let xs = x.reshape((b * s, h))?;
        let logits = self.router.forward(&xs)?;
        if let Some(router) = router {
            *router = Some(logits.reshape((b, s, self.experts.len()))?);
        }
        let probs = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
        let probs: Vec<Vec<f32>> = probs.to_vec2()?;
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); self.experts.len()];
        let mut weights: Vec<Vec<f32>> = vec![Vec::new(); self.experts.len()];
        for (row, p) in probs.iter().enumerate() {
            let mut order: Vec<usize> = (0..p.len()).collect();
            // Highest first; on ties the lower index, as torch.topk on the CPU.
            order.sort_by(|&i, &j| p[j].total_cmp(&p[i]).then(i.cmp(&j)));
            let top = &order[..self.top_k.min(p.len())];
            let sum: f32 = if self.renormalise { top.iter().map(|&e| p[e]).sum() } else { 1.0 };
            for &e in top {
                rows[e].push(row as u32);
                weights[e].push(p[e] / sum);
            }
        }
        let mut out = xs.zeros_like()?;
        for (e, expert) in self.experts.iter().enumerate() {
            if rows[e].is_empty() {
                continue;
            }
            let n = rows[e].len();
            let idx = Tensor::from_vec(std::mem::take(&mut rows[e]), n, xs.device())?;
            let w = Tensor::from_vec(std::mem::take(&mut weights[e]), (n, 1), xs.device())?.to_dtype(xs.dtype())?;
            let y = expert.forward(&xs.index_select(&idx, 0)?, act)?.broadcast_mul(&w)?;
            out = out.index_add(&idx, &y, 0)?;
        }
        out.reshape((b, s, h))
    }
}

/// A block's MLP.
#[derive(Debug, Clone)]
pub(crate) enum Mlp {
    /// One gated MLP.
    Dense(GatedMlp),
    /// Experts.
    Sparse(Moe),
    /// Ungated, with biases.
    Plain(PlainMlp),
}

impl Mlp {
    /// Loads the MLP of block `i` (names relative to the model body).
    pub(crate) fn load(vb: &VarBuilder, cfg: &ModelConfig, i: usize) -> Result<Self> {
        let p = format!("layers.{i}");
        if let Some(g) = &cfg.spec.gpt {
            let (h, im) = (cfg.hidden_size, cfg.intermediate_size);
            let p = format!("{}.{i}", g.layers);
            let load = |n: &str, out, inp| Linear::load_gpt(vb, &format!("{p}.{n}"), out, inp, g.conv1d, cfg.mlp_bias);
            return Ok(Mlp::Plain(PlainMlp { up: load(g.mlp[0], im, h)?, down: load(g.mlp[1], h, im)? }));
        }
        match (&cfg.spec.moe, &cfg.moe) {
            (Some(names), Some(_)) if cfg.sparse(i) => Ok(Mlp::Sparse(Moe::load(vb, &p, cfg, names)?)),
            // Phi-3: gate and up stored as one `gate_up_proj` (gate first).
            _ if cfg.spec.fused => Ok(Mlp::Dense(GatedMlp {
                gate_up: Linear::load(
                    vb,
                    &format!("{p}.mlp.gate_up_proj"),
                    2 * cfg.intermediate_size,
                    cfg.hidden_size,
                    cfg.mlp_bias,
                )?,
                down: Linear::load(
                    vb,
                    &format!("{p}.mlp.down_proj"),
                    cfg.hidden_size,
                    cfg.intermediate_size,
                    cfg.mlp_bias,
                )?,
            })),
            _ => Ok(Mlp::Dense(GatedMlp::load(
                vb,
                &format!("{p}.mlp"),
                ["gate_proj", "up_proj", "down_proj"],
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.mlp_bias,
            )?)),
        }
    }

    /// `x` (`[b, s, h]`) through the MLP; `router` keeps a mixture's router logits
    /// (`[b, s, experts]`) when given.
    pub(crate) fn forward(&self, x: &Tensor, act: Activation, router: Option<&mut Option<Tensor>>) -> Result<Tensor> {
        match self {
            Mlp::Dense(m) => m.forward(x, act),
            Mlp::Sparse(m) => m.forward(x, act, router),
            Mlp::Plain(m) => m.down.forward(&act.apply(&m.up.forward(x)?)?),
        }
    }
}
